/**
 * devices/native: typed wrappers over the cgstep_bpf addon (native/bpf.c).
 *
 * Each function is one system call; a failure becomes a KernelError naming the
 * operation, the cgroup directory (or program) and the errno, and a failed load
 * a VerifierError that also carries the verifier's log (src/sys/addon loads the
 * addon). Which program to load, attach or replace is controller.ts.
 */
import { AgentError, KernelError } from '../errors.js';
import { addonCall as call, addonConstant } from '../sys/addon.js';

export { addonError, ADDON_PATH } from '../sys/addon.js';
export { VerifierError } from '../errors.js';

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

/** Attach flags and the program type, as the addon was built with them. */
export const bpfFlags = {
  get ALLOW_MULTI(): number {
    return addonConstant('BPF_F_ALLOW_MULTI');
  },
  get REPLACE(): number {
    return addonConstant('BPF_F_REPLACE');
  },
  get PROG_TYPE_CGROUP_DEVICE(): number {
    return addonConstant('BPF_PROG_TYPE_CGROUP_DEVICE');
  },
};

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
