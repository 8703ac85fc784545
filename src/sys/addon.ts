/**
 * sys/addon: loads the project's N-API addon (native/bpf.c, inotify.c and
 * poll.c, built to build/Release/cgstep_bpf.node) and turns its thrown errors
 * into typed ones.
 *
 * The one place the addon is required: src/devices wraps its bpf() calls,
 * src/cgroupfs its xattr and inotify calls, src/rpc its listener's poll,
 * src/sys/privdir a socket's ACL. A failed call throws a KernelError naming
 * the syscall, the path it was made for and the errno name; a failed program
 * load a VerifierError carrying the verifier's log. Holds no policy.
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { AgentError, KernelError, VerifierError } from '../errors.js';

export interface RawProgInfo { id: number; type: number; name: string; tag: string; xlated: Buffer; jitedLen: number; loadTime: string; createdByUid: number }

export type AddonConstant = 'BPF_F_ALLOW_OVERRIDE' | 'BPF_F_ALLOW_MULTI' | 'BPF_F_REPLACE' | 'BPF_PROG_TYPE_CGROUP_DEVICE' | 'BPF_CGROUP_DEVICE' | 'BPF_OBJ_NAME_LEN';

export interface Addon {
  progLoad(insns: Buffer, name: string): number;
  progAttach(targetFd: number, progFd: number, flags: number, replaceFd: number): void;
  progDetach(targetFd: number, progFd: number): void;
  progQuery(targetFd: number, effective: boolean): { attachFlags: number; ids: number[] };
  progGetFdById(id: number): number;
  progGetNextId(id: number): number;
  progInfo(fd: number): RawProgInfo;
  close(fd: number): void;
  openDir(path: string): number;
  /** null: no such xattr (ENODATA), or none on this filesystem (ENOTSUP). */
  xattrGet(path: string, name: string): Buffer | null;
  xattrSet(path: string, name: string, value: Buffer): void;
  xattrRemove(path: string, name: string): void;
  /** native/inotify.c: one inotify fd (non-blocking); see cgroupfs/watch. */
  inotifyOpen(): number;
  inotifyAdd(fd: number, path: string, mask: number): number;
  inotifyRemove(fd: number, wd: number): void;
  inotifyRead(fd: number, buf: Buffer): number;
  /** native/poll.c: onReadable runs on the event loop while fd is readable; keepAlive false never holds the process up. */
  pollStart(fd: number, onReadable: () => void, keepAlive: boolean): void;
  /** Stops polling fd (which stays open: its owner closes it). */
  pollStop(fd: number): void;
  constants: Record<AddonConstant, number>;
}

/** Where the addon lives relative to this file: src/sys or dist/sys, two levels below the root. */
export const ADDON_PATH = fileURLToPath(new URL('../../build/Release/cgstep_bpf.node', import.meta.url));

/** Every function of Addon: a build older than this code lacks some, and is refused whole. */
const FUNCTIONS = ['progLoad', 'progAttach', 'progDetach', 'progQuery', 'progGetFdById', 'progGetNextId', 'progInfo', 'close', 'openDir', 'xattrGet', 'xattrSet', 'xattrRemove', 'inotifyOpen', 'inotifyAdd', 'inotifyRemove', 'inotifyRead', 'pollStart', 'pollStop'] as const satisfies readonly (keyof Addon)[];

let addon: Addon | null = null;
let loadError: string | null = null;

export function loadAddon(): Addon {
  if (addon) return addon;
  if (loadError === null) {
    try {
      const a = createRequire(import.meta.url)(ADDON_PATH) as Addon;
      const missing = FUNCTIONS.filter((f) => typeof a[f] !== 'function');
      if (missing.length === 0) return (addon = a);
      loadError = `the cgstep_bpf addon at ${ADDON_PATH} is older than this code (it lacks ${missing.join(', ')}): rebuild it with npx node-gyp rebuild (or npm ci)`;
    } catch (err) {
      loadError = `the cgstep_bpf addon did not load from ${ADDON_PATH} (build it with npm ci or npx node-gyp rebuild): ${(err as Error).message}`;
    }
  }
  throw new AgentError('ENOTSUP', loadError);
}

/** null when the addon loads; otherwise why not. */
export function addonError(): string | null {
  try {
    loadAddon();
    return null;
  } catch (err) {
    return (err as Error).message;
  }
}

/** A constant as the addon was compiled with it (from the kernel headers), not a copy of its value. */
export function addonConstant(name: AddonConstant): number {
  return loadAddon().constants[name];
}

interface NativeErr { errno?: unknown; syscall?: unknown; verifierLog?: unknown }

function typed(err: unknown, op: string, path: string): Error {
  const e = err as NativeErr;
  if (typeof e?.errno !== 'string') return err instanceof Error ? err : new Error(String(err));
  const syscall = typeof e.syscall === 'string' ? e.syscall : op;
  if (syscall === 'BPF_PROG_LOAD') return new VerifierError(path, e.errno, typeof e.verifierLog === 'string' ? e.verifierLog : '');
  return new KernelError(syscall.startsWith('BPF_') ? `bpf(${syscall})` : syscall, path, e.errno);
}

/** Run one addon call; its failure becomes a KernelError (or VerifierError) naming op and path. */
export function addonCall<T>(op: string, path: string, fn: (a: Addon) => T): T {
  const a = loadAddon();
  try {
    return fn(a);
  } catch (err) {
    throw typed(err, op, path);
  }
}
