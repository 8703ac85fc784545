/**
 * devices/native: typed wrappers over the cgstep_bpf addon (native/bpf.c).
 *
 * Each function is one system call; a failure becomes a KernelError naming the
 * operation, the cgroup directory (or program) and the errno, and a failed load
 * a VerifierError that also carries the verifier's log. Owns loading the addon
 * and nothing else: which program to load, attach or replace is controller.ts.
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { AgentError, KernelError } from '../errors.js';

interface Addon {
  progLoad(insns: Buffer, name: string): number;
  progAttach(targetFd: number, progFd: number, flags: number, replaceFd: number): void;
  progDetach(targetFd: number, progFd: number): void;
  progQuery(targetFd: number, effective: boolean): { attachFlags: number; ids: number[] };
  progGetFdById(id: number): number;
  progGetNextId(id: number): number;
  progInfo(fd: number): RawInfo;
  close(fd: number): void;
  openDir(path: string): number;
  xattrGet(path: string, name: string): Buffer;
  xattrSet(path: string, name: string, value: Buffer): void;
  xattrRemove(path: string, name: string): void;
  constants: Record<'BPF_F_ALLOW_OVERRIDE' | 'BPF_F_ALLOW_MULTI' | 'BPF_F_REPLACE' | 'BPF_PROG_TYPE_CGROUP_DEVICE' | 'BPF_CGROUP_DEVICE' | 'BPF_OBJ_NAME_LEN', number>;
}

interface RawInfo { id: number; type: number; name: string; tag: string; xlated: Buffer; jitedLen: number; loadTime: string; createdByUid: number }

export interface ProgInfo {
  id: number;
  /** BPF_PROG_TYPE_*; 15 is CGROUP_DEVICE. */
  type: number;
  name: string;
  /** The kernel's 8-byte tag, hex. */
  tag: string;
  /** The translated instructions as the kernel holds them. */
  xlated: Buffer;
  jitedLen: number;
  /** Nanoseconds since boot. */
  loadTime: bigint;
  createdByUid: number;
}

/** Where the addon lives relative to this file: src/devices or dist/devices, two levels below the root. */
export const ADDON_PATH = fileURLToPath(new URL('../../build/Release/cgstep_bpf.node', import.meta.url));

let addon: Addon | null = null;
let loadError: string | null = null;

function load(): Addon {
  if (addon) return addon;
  if (loadError === null) {
    try {
      addon = createRequire(import.meta.url)(ADDON_PATH) as Addon;
      return addon;
    } catch (err) {
      loadError = `the cgstep_bpf addon did not load from ${ADDON_PATH} (build it with npm ci or npx node-gyp rebuild): ${(err as Error).message}`;
    }
  }
  throw new AgentError('ENOTSUP', loadError);
}

/** null when the addon loads; otherwise why not. */
export function addonError(): string | null {
  try {
    load();
    return null;
  } catch (err) {
    return (err as Error).message;
  }
}

export const BPF_F_ALLOW_MULTI = 1 << 1;
export const BPF_F_REPLACE = 1 << 2;
export const BPF_PROG_TYPE_CGROUP_DEVICE = 15;
/** 16 bytes with the NUL: a program name has at most 15 characters. */
export const PROG_NAME_MAX = 15;

interface NativeErr { errno?: unknown; syscall?: unknown; verifierLog?: unknown; message?: string }

/** A failed BPF_PROG_LOAD, with the verifier's log. */
export class VerifierError extends KernelError {
  readonly verifierLog: string;
  constructor(path: string, errno: string, log: string) {
    const lastLine = log.trim().split('\n').filter((l) => l && !l.startsWith('processed ')).pop();
    super('bpf(BPF_PROG_LOAD)', path, errno, lastLine ? `verifier: ${lastLine}` : undefined);
    this.name = 'VerifierError';
    this.verifierLog = log;
  }
}

function kernelError(err: unknown, op: string, path: string): Error {
  const e = err as NativeErr;
  if (typeof e?.errno !== 'string') return err instanceof Error ? err : new Error(String(err));
  const syscall = typeof e.syscall === 'string' ? e.syscall : op;
  const name = syscall.startsWith('BPF_') ? `bpf(${syscall})` : syscall;
  if (syscall === 'BPF_PROG_LOAD') return new VerifierError(path, e.errno, typeof e.verifierLog === 'string' ? e.verifierLog : '');
  return new KernelError(name, path, e.errno);
}

function call<T>(op: string, path: string, fn: (a: Addon) => T): T {
  const a = load();
  try {
    return fn(a);
  } catch (err) {
    throw kernelError(err, op, path);
  }
}

/** Load a BPF_PROG_TYPE_CGROUP_DEVICE program (license GPL). `forPath` is named in errors. */
export function progLoad(insns: Buffer, name: string, forPath: string): number {
  if (!/^[A-Za-z0-9_.]{1,15}$/.test(name)) throw new AgentError('EINVAL', `BPF program name ${JSON.stringify(name)}: 1-15 of [A-Za-z0-9_.]`);
  return call('BPF_PROG_LOAD', forPath, (a) => a.progLoad(insns, name));
}

/** Attach to a cgroup as BPF_CGROUP_DEVICE. `replaceFd` is used with BPF_F_REPLACE. */
export function progAttach(dirFd: number, dir: string, progFd: number, flags: number, replaceFd = 0): void {
  call('BPF_PROG_ATTACH', dir, (a) => a.progAttach(dirFd, progFd, flags, replaceFd));
}

export function progDetach(dirFd: number, dir: string, progFd: number): void {
  call('BPF_PROG_DETACH', dir, (a) => a.progDetach(dirFd, progFd));
}

/** Ids of the device programs attached to the directory itself (or, effective, those that run for it). */
export function progQuery(dirFd: number, dir: string, effective = false): { attachFlags: number; ids: number[] } {
  return call('BPF_PROG_QUERY', dir, (a) => a.progQuery(dirFd, effective));
}

export function progGetFdById(id: number): number {
  return call('BPF_PROG_GET_FD_BY_ID', `prog ${id}`, (a) => a.progGetFdById(id));
}

/** The next loaded program id after `id`, or null at the end. */
export function progGetNextId(id: number): number | null {
  try {
    return call('BPF_PROG_GET_NEXT_ID', `after prog ${id}`, (a) => a.progGetNextId(id));
  } catch (err) {
    if (err instanceof KernelError && err.errno === 'ENOENT') return null;
    throw err;
  }
}

export function progInfo(fd: number, what: string): ProgInfo {
  const r = call('BPF_OBJ_GET_INFO_BY_FD', what, (a) => a.progInfo(fd));
  return { ...r, loadTime: BigInt(r.loadTime) };
}

export function closeFd(fd: number): void {
  call('close', `fd ${fd}`, (a) => a.close(fd));
}

/** open(dir, O_RDONLY|O_DIRECTORY|O_CLOEXEC): the target fd for attach/query/detach. */
export function openDir(dir: string): number {
  return call('open', dir, (a) => a.openDir(dir));
}

/** Run fn with the fd, then close it whatever happens. */
export function withFd<T>(fd: number, fn: (fd: number) => T): T {
  try {
    return fn(fd);
  } finally {
    closeFd(fd);
  }
}

/** An xattr's value, or null when the file has none of that name. */
export function getXattr(path: string, name: string): Buffer | null {
  try {
    return call('getxattr', path, (a) => a.xattrGet(path, name));
  } catch (err) {
    if (err instanceof KernelError && err.errno === 'ENODATA') return null;
    throw err;
  }
}

export function setXattr(path: string, name: string, value: Buffer): void {
  call('setxattr', path, (a) => a.xattrSet(path, name, value));
}

/** Remove an xattr; false when there was none. */
export function removeXattr(path: string, name: string): boolean {
  try {
    call('removexattr', path, (a) => a.xattrRemove(path, name));
    return true;
  } catch (err) {
    if (err instanceof KernelError && err.errno === 'ENODATA') return false;
    throw err;
  }
}

/** Every loaded BPF program's id (BPF_PROG_GET_NEXT_ID walk). */
export function loadedProgIds(): number[] {
  const ids: number[] = [];
  for (let id = progGetNextId(0); id !== null; id = progGetNextId(id)) ids.push(id);
  return ids;
}

/** Info for a program id, or null if it went away meanwhile. */
export function infoById(id: number): ProgInfo | null {
  let fd: number;
  try {
    fd = progGetFdById(id);
  } catch (err) {
    if (err instanceof KernelError && err.errno === 'ENOENT') return null;
    throw err;
  }
  return withFd(fd, (f) => progInfo(f, `prog ${id}`));
}
