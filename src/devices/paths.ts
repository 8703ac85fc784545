/**
 * devices/paths: device paths named in rules ("/dev/nvidia0 rw"), resolved to
 * their numbers ("c 195:0 rw") off the event loop, before a request reaches
 * the tree (whose policy code is synchronous).
 *
 * A stat runs in libuv's pool with a deadline, so a path on a hung mount costs
 * a pool thread, never the agent's loop. For an untrusted peer every failure
 * reads the same ("no device node at P"), whether the path is missing,
 * unreadable or a plain file, so the agent's root stat() tells it nothing it
 * could not see itself; and at most a few of its stats are pending at once,
 * so hung paths cannot take the whole pool.
 *
 * GresDeviceNodes does the same for gres.conf's File= paths, which policy.ts
 * reads (synchronously) for every policy it builds: they are stat'ed in the
 * pool at start-up and again in the background, and a policy is built from
 * the numbers last read, except that a path last read as missing is looked at
 * again before it is used. waitForGresFiles is start-up's check that every
 * File= is a device node.
 */
import fs from 'node:fs';
import type { Logger } from 'pino';
import { AgentError, ConfigError, fromNodeError, isErrno } from '../errors.js';
import type { GresUnit } from './gres.js';
import type { DeviceRequest } from './request.js';
import { accessMask, maskToAccess, splitDev, statDevice, type DeviceNode } from './rules.js';

export interface PathResolverOptions {
  /** How long one stat may take, ms. */
  timeoutMs?: number;
  /** Untrusted stats that may be pending (including hung ones) before more are refused. */
  maxUntrusted?: number;
}

export class DevicePathResolver {
  private untrusted = 0;
  private readonly timeoutMs: number;
  private readonly maxUntrusted: number;

  constructor(o: PathResolverOptions = {}) {
    this.timeoutMs = o.timeoutMs ?? 2000;
    this.maxUntrusted = o.maxUntrusted ?? 2;
  }

  /** The request with every path rule in allow and deny replaced by its numbers; the same object when it has none. */
  async resolve(req: DeviceRequest, trusted: boolean): Promise<DeviceRequest> {
    const hasPath = (l?: string[]) => l?.some((r) => r.trimStart().startsWith('/')) ?? false;
    if (!hasPath(req.allow) && !hasPath(req.deny)) return req;
    const out: DeviceRequest = { ...req };
    const seen = new Map<string, DeviceNode>();
    for (const key of ['allow', 'deny'] as const) {
      const list = req[key];
      if (!list) continue;
      const resolved: string[] = [];
      // One stat at a time: a request with thousands of paths does not flood the pool.
      for (const text of list) resolved.push(await this.rule(text, trusted, seen));
      out[key] = resolved;
    }
    return out;
  }

  private async rule(text: string, trusted: boolean, seen: Map<string, DeviceNode>): Promise<string> {
    const words = text.trim().split(/\s+/);
    if (!words[0]?.startsWith('/') || words.length > 2) return text; // not a path rule, or one parseRule will refuse
    const access = maskToAccess(accessMask(words[1] ?? 'rwm', text));
    let node = seen.get(words[0]);
    if (!node) {
      node = await this.stat(words[0], text, trusted);
      seen.set(words[0], node);
    }
    return `${node.type} ${node.major}:${node.minor} ${access}`;
  }

  private async stat(p: string, text: string, trusted: boolean): Promise<DeviceNode> {
    if (!trusted && this.untrusted >= this.maxUntrusted) throw new AgentError('EBUSY', `device rule ${JSON.stringify(text)}: too many device path lookups pending; try again`);
    if (!trusted) this.untrusted++;
    const pending = fs.promises.stat(p, { bigint: true }).finally(() => {
      if (!trusted) this.untrusted--;
    });
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new AgentError('ETIMEDOUT', `device rule ${JSON.stringify(text)}: stat of ${p} did not answer within ${this.timeoutMs} ms`)), this.timeoutMs);
    });
    let st: fs.BigIntStats;
    try {
      st = await Promise.race([pending, deadline]);
    } catch (err) {
      pending.catch(() => undefined);
      if (!trusted) throw notADevice(text, p);
      if (err instanceof AgentError) throw err;
      throw fromNodeError('stat', p, err);
    } finally {
      clearTimeout(timer);
    }
    const type = st.isCharacterDevice() ? 'c' : st.isBlockDevice() ? 'b' : null;
    if (!type) throw trusted ? new AgentError('EINVAL', `${p} is not a character or block device`) : notADevice(text, p);
    return { type, ...splitDev(st.rdev) };
  }
}

function notADevice(text: string, p: string): AgentError {
  return new AgentError('EINVAL', `device rule ${JSON.stringify(text)}: no device node at ${p}`);
}

/**
 * The device numbers behind gres.conf's File= paths, read in libuv's pool and
 * kept, so that building a policy does not stat a device that answered on the
 * event loop (a GPU file on a hung mount would stop the agent for every job).
 * refresh() stats every path at once with a deadline (awaited at start-up);
 * stat() answers from the last reading and starts a new one in the background
 * when it is older than maxAgeMs. A path whose stat has not come back yet is
 * not asked again (one pool thread at most per hung path), and one that stops
 * answering keeps the numbers it had: a device's numbers do not change because
 * its mount hangs.
 * A path last read as missing (or not a device) is stat'ed again in line before
 * stat() answers for it, unless its stat is pending or timed out: a stale
 * "missing" would leave a device that has come back undenied in the policy
 * built from it, and a missing node is not a hung mount (it answered). lastKnown()
 * gives the numbers a path had when last seen, so that a device that is gone
 * can still be denied by them.
 * A path it was not given (an absolute gres path without gres.conf, which
 * only an admin may name) is stat'ed in line as before.
 */
export class GresDeviceNodes {
  private nodes = new Map<string, DeviceNode | Error>();
  private readonly last = new Map<string, DeviceNode>();
  private readonly inflight = new Set<string>();
  private readAt = 0;
  private refreshing: Promise<void> | null = null;

  constructor(
    private readonly paths: readonly string[],
    private readonly o: { timeoutMs?: number; maxAgeMs?: number } = {},
  ) {}

  /** Read every path again (one pass at a time). */
  refresh(): Promise<void> {
    this.refreshing ??= Promise.all(this.paths.map((p) => this.read(p))).then(() => {
      this.readAt = Date.now();
      this.refreshing = null;
    });
    return this.refreshing;
  }

  /** statDevice's contract, from the last reading: the node, or the error its stat gave (read again now, see above). */
  readonly stat = (p: string): DeviceNode => {
    const n = this.nodes.get(p);
    if (n === undefined) return statDevice(p);
    if (Date.now() - this.readAt > (this.o.maxAgeMs ?? 10000)) void this.refresh();
    if (!(n instanceof Error)) return n;
    if (this.inflight.has(p) || (n instanceof AgentError && n.code === 'ETIMEDOUT')) throw n;
    let now: DeviceNode | Error;
    try {
      now = statDevice(p);
    } catch (err) {
      now = err as Error;
    }
    this.record(p, now);
    if (now instanceof Error) throw now;
    return now;
  };

  /** The numbers p had when it was last read as a device node, if ever. */
  readonly lastKnown = (p: string): DeviceNode | undefined => this.last.get(p);

  private record(p: string, n: DeviceNode | Error): void {
    this.nodes.set(p, n);
    if (!(n instanceof Error)) this.last.set(p, n);
  }

  private async read(p: string): Promise<void> {
    if (this.inflight.has(p)) return;
    this.inflight.add(p);
    try {
      const st = await statWithin(p, this.o.timeoutMs ?? 2000, () => this.inflight.delete(p));
      const type = st.isCharacterDevice() ? 'c' : st.isBlockDevice() ? 'b' : null;
      this.record(p, type ? { type, ...splitDev(st.rdev) } : new AgentError('EINVAL', `${p} is not a character or block device`));
    } catch (err) {
      const hung = err instanceof AgentError && err.code === 'ETIMEDOUT';
      if (!(hung && this.nodes.get(p) && !(this.nodes.get(p) instanceof Error))) this.nodes.set(p, err as Error);
    }
  }
}

/**
 * A stat in libuv's pool that gives up after timeoutMs (ETIMEDOUT); a hung
 * stat keeps its pool thread, not the caller. `settled` runs when the stat
 * itself ends, however late.
 */
async function statWithin(p: string, timeoutMs: number, settled?: () => void): Promise<fs.BigIntStats> {
  const pending = settled ? fs.promises.stat(p, { bigint: true }).finally(settled) : fs.promises.stat(p, { bigint: true });
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new AgentError('ETIMEDOUT', `stat of gres device ${p} did not answer within ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    return await Promise.race([pending, deadline]);
  } catch (err) {
    pending.catch(() => undefined);
    throw err instanceof AgentError ? err : fromNodeError('stat', p, err);
  } finally {
    clearTimeout(timer);
  }
}

export interface GresWaitOptions {
  /** How long to wait for files that do not exist yet, ms (slurmd waits 20 s). */
  waitMs: number;
  /** How often they are looked for again, ms. */
  intervalMs?: number;
  /** How long one stat may take, ms. */
  timeoutMs?: number;
  log?: Logger;
}

const GRES_HINT = 'make the device nodes (load the driver) or correct File= in gres.conf; --gres-wait (CGSTEP_GRES_WAIT) sets how long start-up waits for them';

/**
 * Start-up's check of gres.conf's device files, as slurmd's: a file that does
 * not exist yet is waited for (a driver may still be making its nodes) for at
 * most waitMs in all, then the agent refuses to start (ConfigError naming
 * FILE:LINE). A path that is not a device node, or whose stat fails otherwise,
 * is refused at once: neither can be denied to a job, and a device the agent
 * cannot deny would be open to every job.
 */
export async function waitForGresFiles(units: readonly GresUnit[], o: GresWaitOptions): Promise<void> {
  const deadline = Date.now() + o.waitMs;
  let pending = units.flatMap((u) => u.files.map((path) => ({ path, origin: u.origin })));
  const waited = new Set<string>();
  for (;;) {
    const missing = (await Promise.all(pending.map(async (f) => ((await gresFileMissing(f.path, f.origin, o.timeoutMs ?? 2000)) ? [f] : [])))).flat();
    for (const f of pending) if (waited.has(f.path) && !missing.includes(f)) o.log?.info({ path: f.path, origin: f.origin }, 'gres device file now exists');
    if (!missing.length) return;
    const left = deadline - Date.now();
    if (left <= 0) {
      const names = missing.map((f) => `${f.origin}: File= ${f.path}`).join(', ');
      throw new ConfigError(`${names}: no such device file (waited ${o.waitMs / 1000} s for ${missing.length > 1 ? 'them' : 'it'}, as slurmd does)`, GRES_HINT);
    }
    for (const f of missing) {
      if (!waited.has(f.path)) o.log?.warn({ path: f.path, origin: f.origin, waitMs: o.waitMs }, 'waiting for a gres device file that does not exist yet');
      waited.add(f.path);
    }
    await new Promise((r) => setTimeout(r, Math.min(o.intervalMs ?? 500, left)));
    pending = missing;
  }
}

/** True when p does not exist (yet); throws a ConfigError when it cannot be a gres device; false when it is one. */
async function gresFileMissing(p: string, origin: string, timeoutMs: number): Promise<boolean> {
  let st: fs.BigIntStats;
  try {
    st = await statWithin(p, timeoutMs);
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return true;
    throw new ConfigError(`${origin}: File= ${p}: ${(err as Error).message}`, GRES_HINT);
  }
  if (!st.isCharacterDevice() && !st.isBlockDevice()) throw new ConfigError(`${origin}: File= ${p} is not a character or block device`, GRES_HINT);
  return false;
}
