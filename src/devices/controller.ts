/**
 * devices/controller: puts a compiled device program on a cgroup directory and
 * keeps exactly one of ours there.
 *
 * Owns the attach/replace/detach protocol, the probe, the audit log lines and
 * the policy xattr. Must not touch other agents' programs (any program whose
 * name does not start with PROG_PREFIX is left alone), the rule semantics
 * (rules.ts) or the cgroup tree's layout (src/steps).
 *
 *  - Every program is attached with BPF_F_ALLOW_MULTI. The kernel then runs the
 *    programs of the directory and of every ancestor, and a device is usable
 *    only if all of them return 1: a child's program can narrow its parent's
 *    policy, never widen it. The job/step/task levels rely on this.
 *  - An update replaces our program in one step with BPF_F_REPLACE when the
 *    kernel has it (5.6+); otherwise the new program is attached first and the
 *    old one detached after, so for a moment both run (the intersection, never
 *    looser than either). Extra programs of ours (left by a crash between those
 *    two steps) are detached in the same update.
 *  - Applying the policy already attached (same instructions) changes nothing.
 *  - Every fd (program, directory) is closed before returning; the attachment
 *    keeps the program alive. With `shareLoaded`, the last few loaded programs
 *    stay open, keyed by their instructions: a directory given the same policy
 *    as an earlier one gets that program attached instead of a new load (the
 *    verifier's pass is most of the cost of putting a policy on a step, and
 *    most steps on a node share a handful of policies). A program is immutable
 *    and runs only on the directories it is attached to, so sharing one
 *    changes no directory's policy.
 *  - The normal form of the policy is stored beside the program as the xattr
 *    trusted.cgstep.devices, so a restarted agent can read what is in force
 *    (readPolicy) and check it matches the program (describe().consistent).
 * Calls are synchronous; callers serialise updates per directory (the agent's
 * per-job lock does).
 */
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { findCgroup2Mount, getXattr, makeDir, ownCgroup, removeDir, removeXattr, setXattr } from '../cgroupfs/index.js';
import { AgentError, isErrno } from '../errors.js';
import { compile, compileNormal, parsePolicy, type Compiled, type NormalPolicy } from './compiler.js';
import {
  addonError,
  bpfFlags,
  closeFd,
  infoById,
  loadedProgIds,
  openDir,
  progAttach,
  progDetach,
  progGetFdById,
  progInfo,
  progLoad,
  progQuery,
  type ProgInfo,
} from './native.js';
import type { RuleSet } from './rules.js';

/** Programs whose name starts with this are cgstep's. */
export const PROG_PREFIX = 'cgstep_dev';
export const POLICY_XATTR = 'trusted.cgstep.devices';
/** kernfs keeps an xattr value up to XATTR_SIZE_MAX. */
const XATTR_MAX = 65536;

export interface ProbeResult {
  /** Device programs can be loaded and attached. */
  supported: boolean;
  /** BPF_F_REPLACE works (else updates attach new, then detach old). */
  replace: boolean;
  reason?: string;
}

export interface ApplyResult {
  progId: number;
  /** Ours that BPF_F_REPLACE swapped out. */
  replacedProgId?: number;
  /** Ours detached after the new one was attached. */
  detachedProgIds: number[];
  /** The same program was already the only one of ours: nothing was loaded. */
  unchanged: boolean;
  policy: NormalPolicy;
  insnCount: number;
  /** The xattr was written (false: see the warning in the log). */
  policyStored: boolean;
}

export interface DirQuery {
  /** Device programs attached to this directory itself, in run order. */
  progIds: number[];
  /** Those that are cgstep's. */
  ours: number[];
}

export interface DirDescription extends DirQuery {
  /** The stored normal form, or null when there is none. */
  policy: NormalPolicy | null;
  /** Exactly one of ours and it is the stored policy's program (or neither exists). */
  consistent: boolean;
}

export interface ControllerOptions {
  /** Name given to loaded programs; must start with PROG_PREFIX (max 15 chars). */
  progName?: string;
  /** false: never use BPF_F_REPLACE. Default: whatever the probe finds. */
  replace?: boolean;
  /** Where the probe may create its scratch cgroup; default the agent's own cgroup. */
  scratchParent?: string;
  xattrName?: string;
  /** Keep up to this many loaded programs open for reuse by later directories (default 0: none). */
  shareLoaded?: number;
}

/** A program kept open after its load, for the next directory with the same instructions. */
interface Shared { fd: number; id: number; used: number }

/** How long a kept program is kept unused before its fd is closed. */
const SHARED_IDLE_MS = 60_000;

/** "r0 = 1; exit": the probe's program. */
const ALLOW_ALL = Buffer.from('b700000001000000' + '9500000000000000', 'hex');

interface Ours { id: number; fd: number; info: ProgInfo }

/** What hold() kept of a directory's device policy. */
export interface Held {
  progs: { id: number; fd: number }[];
  policy: Buffer | null;
}

export class DeviceController {
  private probed: ProbeResult | null = null;
  readonly progName: string;
  private readonly xattr: string;
  /** Loaded programs kept open (shareLoaded), by their instructions, least recently used first. */
  private readonly shared = new Map<string, Shared>();

  constructor(
    private readonly log: Logger,
    private readonly opts: ControllerOptions = {},
  ) {
    this.progName = opts.progName ?? PROG_PREFIX;
    if (!this.progName.startsWith(PROG_PREFIX) || !/^[A-Za-z0-9_.]{1,15}$/.test(this.progName)) {
      throw new AgentError('EINVAL', `device program name ${JSON.stringify(this.progName)} must start with ${PROG_PREFIX} and have at most 15 of [A-Za-z0-9_.]`);
    }
    this.xattr = opts.xattrName ?? POLICY_XATTR;
  }

  /**
   * Can device programs be used here, and does BPF_F_REPLACE work? Loads a
   * program, attaches it to a scratch cgroup with nobody in it, replaces it,
   * detaches, removes the scratch directory. Done once; the answer is cached.
   */
  probe(): ProbeResult {
    if (this.probed) return this.probed;
    this.probed = this.runProbe();
    this.log.info({ ...this.probed }, 'device control probe');
    return this.probed;
  }

  private runProbe(): ProbeResult {
    const missing = addonError();
    if (missing) return { supported: false, replace: false, reason: missing };
    let parent: string;
    try {
      parent = this.opts.scratchParent ?? ownCgroupDir();
    } catch (err) {
      return { supported: false, replace: false, reason: `no cgroup2 directory to probe in: ${(err as Error).message}` };
    }
    const scratch = path.join(parent, `cgstep-probe-${process.pid}-${randomBytes(3).toString('hex')}`);
    const fds: number[] = [];
    try {
      fds.push(progLoad(ALLOW_ALL, this.progName, scratch));
    } catch (err) {
      closeAll(fds);
      return { supported: false, replace: false, reason: `cannot load a device program: ${(err as Error).message}` };
    }
    try {
      makeDir(scratch);
    } catch (err) {
      closeAll(fds);
      return { supported: false, replace: false, reason: `cannot create the probe cgroup ${scratch}: ${(err as Error).message}` };
    }
    try {
      const dirFd = openDir(scratch);
      fds.push(dirFd);
      try {
        progAttach(dirFd, scratch, fds[0], bpfFlags.ALLOW_MULTI);
      } catch (err) {
        return { supported: false, replace: false, reason: `cannot attach a device program with BPF_F_ALLOW_MULTI: ${(err as Error).message}` };
      }
      if (this.opts.replace === false) return { supported: true, replace: false, reason: 'BPF_F_REPLACE disabled by configuration' };
      const second = progLoad(ALLOW_ALL, this.progName, scratch);
      fds.push(second);
      try {
        progAttach(dirFd, scratch, second, bpfFlags.ALLOW_MULTI | bpfFlags.REPLACE, fds[0]);
      } catch (err) {
        return { supported: true, replace: false, reason: `BPF_F_REPLACE refused (${(err as Error).message}); updates attach the new program, then detach the old` };
      }
      const ids = progQuery(dirFd, scratch).ids;
      const secondId = progInfo(second, scratch).id;
      if (ids.length !== 1 || ids[0] !== secondId) {
        return { supported: true, replace: false, reason: `BPF_F_REPLACE left programs [${ids.join(', ')}] (expected only ${secondId}); not used` };
      }
      return { supported: true, replace: true };
    } catch (err) {
      return { supported: false, replace: false, reason: `device program probe failed: ${(err as Error).message}` };
    } finally {
      // Detach what is still attached so the programs are freed now, not when
      // the kernel gets round to releasing the removed directory.
      if (fds.length > 1) {
        for (const fd of [fds[0], ...fds.slice(2)]) {
          try {
            progDetach(fds[1], scratch, fd);
          } catch {
            // not attached (replaced, or the attach failed)
          }
        }
      }
      closeAll(fds);
      try {
        removeDir(scratch);
      } catch (err) {
        this.log.warn({ dir: scratch, err }, 'could not remove the device probe cgroup');
      }
    }
  }

  /**
   * Put this policy on the directory: load, attach (replacing ours), detach any
   * other of ours, store the policy xattr. Throws ENOTSUP when the probe found
   * no device control, KernelError/VerifierError for the kernel's refusals.
   */
  apply(cgroupDir: string, rules: RuleSet | NormalPolicy | Compiled, opts: { fresh?: boolean } = {}): ApplyResult {
    const c: Compiled = 'insns' in rules ? rules : 'entries' in rules ? compileNormal(rules) : compile(rules);
    const stored = Buffer.from(c.key);
    if (stored.length > XATTR_MAX) throw new AgentError('E2BIG', `device policy for ${cgroupDir} is ${stored.length} bytes stored (at most ${XATTR_MAX}); ${c.policy.entries.length} entries`);
    const pr = this.probe();
    if (!pr.supported) throw new AgentError('ENOTSUP', `device control unavailable: ${pr.reason}`);
    const insnCount = c.insns.length / 8;

    const fds: number[] = [];
    try {
      const dirFd = openDir(cgroupDir);
      fds.push(dirFd);
      // `fresh`: the caller made the directory and put nothing on it, so there is nothing of ours to find.
      const cur = opts.fresh ? [] : this.ours(dirFd, cgroupDir, fds);
      if (cur.length === 1 && cur[0].info.xlated.equals(c.insns)) {
        const policyStored = this.storePolicy(cgroupDir, stored, true);
        this.log.debug({ progId: cur[0].id, dir: cgroupDir }, 'device program already in place');
        return { progId: cur[0].id, detachedProgIds: [], unchanged: true, policy: c.policy, insnCount, policyStored };
      }

      const { fd, id: progId } = this.loaded(c, cgroupDir, fds);

      let replacedProgId: number | undefined;
      let rest = cur;
      if (cur.some((o) => o.id === progId)) {
        // A kept program already on the directory (its instructions read back otherwise): it stays, the others go.
        rest = cur.filter((o) => o.id !== progId);
      } else if (cur.length > 0 && pr.replace) {
        progAttach(dirFd, cgroupDir, fd, bpfFlags.ALLOW_MULTI | bpfFlags.REPLACE, cur[0].fd);
        replacedProgId = cur[0].id;
        rest = cur.slice(1);
        this.log.info({ progId, replacedProgId, dir: cgroupDir }, 'device program replaced');
      } else {
        progAttach(dirFd, cgroupDir, fd, bpfFlags.ALLOW_MULTI);
        // On a directory the caller just made, the caller's own line names the program (one line a request).
        this.log[opts.fresh ? 'debug' : 'info']({ progId, dir: cgroupDir }, 'device program attached');
      }
      const detachedProgIds = this.detachAll(dirFd, cgroupDir, rest);
      const policyStored = this.storePolicy(cgroupDir, stored, false);
      return { progId, ...(replacedProgId !== undefined ? { replacedProgId } : {}), detachedProgIds, unchanged: false, policy: c.policy, insnCount, policyStored };
    } finally {
      closeAll(fds);
    }
  }

  /**
   * Keep what apply() would replace on the directory (our programs, held open
   * by fd so they stay loaded, and the stored policy) so that restore() can put
   * exactly those back. release() when they are no longer needed.
   */
  hold(cgroupDir: string): Held {
    const fds: number[] = [];
    try {
      const dirFd = openDir(cgroupDir);
      fds.push(dirFd);
      const progs = this.ours(dirFd, cgroupDir, fds).map((o) => ({ id: o.id, fd: progGetFdById(o.id) }));
      return { progs, policy: getXattr(cgroupDir, this.xattr) };
    } finally {
      closeAll(fds);
    }
  }

  /** Put held programs and policy back in place of ours (BPF_F_REPLACE where it works), then release them. */
  restore(cgroupDir: string, held: Held): void {
    const fds: number[] = [];
    try {
      const dirFd = openDir(cgroupDir);
      fds.push(dirFd);
      const ours = this.ours(dirFd, cgroupDir, fds);
      let cur = ours.filter((o) => !held.progs.some((h) => h.id === o.id));
      for (const h of held.progs) {
        if (ours.some((o) => o.id === h.id)) continue; // never replaced
        if (cur.length > 0 && this.probe().replace) {
          progAttach(dirFd, cgroupDir, h.fd, bpfFlags.ALLOW_MULTI | bpfFlags.REPLACE, cur[0].fd);
          cur = cur.slice(1);
        } else {
          progAttach(dirFd, cgroupDir, h.fd, bpfFlags.ALLOW_MULTI);
        }
        this.log.info({ progId: h.id, dir: cgroupDir }, 'device program restored');
      }
      this.detachAll(dirFd, cgroupDir, cur);
      if (held.policy) setXattr(cgroupDir, this.xattr, held.policy);
      else removeXattr(cgroupDir, this.xattr);
    } finally {
      closeAll(fds);
      this.release(held);
    }
  }

  /**
   * The program for these instructions: a kept one (shareLoaded), or a new
   * load. A new load's fd goes to `fds` (closed by the caller) unless it is kept.
   */
  private loaded(c: Compiled, cgroupDir: string, fds: number[]): { fd: number; id: number } {
    const key = this.opts.shareLoaded ? c.insns.toString('latin1') : '';
    const now = Date.now();
    const kept = key ? this.shared.get(key) : undefined;
    if (kept) {
      // Most recently used last: the map's order is the eviction order.
      this.shared.delete(key);
      this.shared.set(key, kept);
      kept.used = now;
      this.evict(now, key);
      return kept;
    }
    const fd = progLoad(c.insns, this.progName, cgroupDir);
    let id: number;
    try {
      id = progInfo(fd, cgroupDir).id;
    } catch (err) {
      closeFd(fd);
      throw err;
    }
    this.log.info({ progId: id, dir: cgroupDir, insns: c.insns.length / 8, entries: c.policy.entries.length, default: c.policy.default }, 'device program loaded');
    if (!key) {
      fds.push(fd);
      return { fd, id };
    }
    this.shared.set(key, { fd, id, used: now });
    this.evict(now, key);
    return { fd, id };
  }

  /** Close kept programs beyond shareLoaded, and those unused for SHARED_IDLE_MS, oldest first (never `keep`, the one just used). */
  private evict(now: number, keep: string): void {
    for (const [k, v] of this.shared) {
      if (k === keep) continue;
      if (this.shared.size <= this.opts.shareLoaded! && now - v.used < SHARED_IDLE_MS) break;
      this.shared.delete(k);
      closeAll([v.fd]);
    }
  }

  /** Close the kept programs (shareLoaded); those attached somewhere stay loaded there. */
  close(): void {
    closeAll([...this.shared.values()].map((v) => v.fd));
    this.shared.clear();
  }

  release(held: Held): void {
    closeAll(held.progs.map((h) => h.fd));
    held.progs = [];
  }

  /** The device programs on the directory itself, and which are ours. */
  query(cgroupDir: string): DirQuery {
    const fds: number[] = [];
    try {
      const dirFd = openDir(cgroupDir);
      fds.push(dirFd);
      const progIds = progQuery(dirFd, cgroupDir).ids;
      const ours = this.ours(dirFd, cgroupDir, fds, progIds).map((o) => o.id);
      return { progIds, ours };
    } finally {
      closeAll(fds);
    }
  }

  /** Ids of every device program that runs for processes in the directory (its own and its ancestors'). */
  effective(cgroupDir: string): number[] {
    const dirFd = openDir(cgroupDir);
    try {
      return progQuery(dirFd, cgroupDir, true).ids;
    } finally {
      closeFd(dirFd);
    }
  }

  /** Detach every program of ours from the directory and drop the policy xattr. A missing directory has none. */
  detach(cgroupDir: string): { detached: number[] } {
    const fds: number[] = [];
    try {
      let dirFd: number;
      try {
        dirFd = openDir(cgroupDir);
      } catch (err) {
        if (isErrno(err, 'ENOENT')) return { detached: [] };
        throw err;
      }
      fds.push(dirFd);
      const detached = this.detachAll(dirFd, cgroupDir, this.ours(dirFd, cgroupDir, fds));
      try {
        removeXattr(cgroupDir, this.xattr);
      } catch (err) {
        this.log.warn({ dir: cgroupDir, err }, 'could not remove the device policy xattr');
      }
      return { detached };
    } finally {
      closeAll(fds);
    }
  }

  /** The policy stored on the directory by apply(), or null when none is. */
  readPolicy(cgroupDir: string): NormalPolicy | null {
    const v = getXattr(cgroupDir, this.xattr);
    return v === null ? null : parsePolicy(v.toString('utf8'));
  }

  /** query() plus the stored policy and whether the program on the directory is that policy's. */
  describe(cgroupDir: string): DirDescription {
    const fds: number[] = [];
    try {
      const dirFd = openDir(cgroupDir);
      fds.push(dirFd);
      const progIds = progQuery(dirFd, cgroupDir).ids;
      const ours = this.ours(dirFd, cgroupDir, fds, progIds);
      let policy: NormalPolicy | null = null;
      let readable = true;
      try {
        policy = this.readPolicy(cgroupDir);
      } catch (err) {
        readable = false;
        this.log.warn({ dir: cgroupDir, err }, 'unreadable device policy xattr');
      }
      let consistent: boolean;
      if (!readable) consistent = false;
      else if (policy === null) consistent = ours.length === 0;
      else consistent = ours.length === 1 && ours[0].info.xlated.equals(compileNormal(policy).insns);
      return { progIds, ours: ours.map((o) => o.id), policy, consistent };
    } finally {
      closeAll(fds);
    }
  }

  /** Our programs on the directory, with an fd each (pushed to fds for the caller to close). */
  private ours(dirFd: number, dir: string, fds: number[], ids?: number[]): Ours[] {
    const out: Ours[] = [];
    for (const id of ids ?? progQuery(dirFd, dir).ids) {
      let fd: number;
      try {
        fd = progGetFdById(id);
      } catch (err) {
        if (isErrno(err, 'ENOENT')) continue; // detached and freed since the query
        throw err;
      }
      fds.push(fd);
      const info = progInfo(fd, dir);
      if (info.name.startsWith(PROG_PREFIX)) out.push({ id, fd, info });
    }
    return out;
  }

  private detachAll(dirFd: number, dir: string, list: Ours[]): number[] {
    const done: number[] = [];
    for (const o of list) {
      try {
        progDetach(dirFd, dir, o.fd);
      } catch (err) {
        if (isErrno(err, 'ENOENT')) continue; // someone detached it first
        throw err;
      }
      done.push(o.id);
      this.log.info({ progId: o.id, dir }, 'device program detached');
    }
    return done;
  }

  private storePolicy(dir: string, value: Buffer, onlyIfDifferent: boolean): boolean {
    try {
      if (onlyIfDifferent && getXattr(dir, this.xattr)?.equals(value)) return true;
      setXattr(dir, this.xattr, value);
      return true;
    } catch (err) {
      this.log.warn({ dir, xattr: this.xattr, err }, 'device policy not stored; a restarted agent will not know it');
      return false;
    }
  }
}

function closeAll(fds: number[]): void {
  for (const fd of fds.splice(0).reverse()) {
    try {
      closeFd(fd);
    } catch {
      // close() failing leaves nothing to do; the fd is gone either way on Linux
    }
  }
}

/** The agent's own cgroup2 directory (from /proc/self/cgroup). */
function ownCgroupDir(): string {
  const own = ownCgroup();
  if (own === null) throw new AgentError('ENOTSUP', 'this process is in no cgroup2 hierarchy');
  return path.join(findCgroup2Mount().mountPoint, own);
}

/** Loaded programs (anywhere on the node) whose name starts with the prefix. */
export function loadedPrograms(prefix = PROG_PREFIX): ProgInfo[] {
  const out: ProgInfo[] = [];
  for (const id of loadedProgIds()) {
    const info = infoById(id);
    if (info && info.name.startsWith(prefix)) out.push(info);
  }
  return out;
}

