/**
 * rpc/limits: what one non-admin peer may cost the agent. Per-uid token
 * buckets for the reads whose cost grows with the tree (list, stats) and for
 * requests that compile a device policy, and slots that let only a few such
 * requests run at once for all non-admin peers together, so root's requests
 * always find the event loop nearly free.
 * Admin peers (root, operators) are never rate-limited here. And the number of
 * device rules and of tasks one request may carry, which bounds the policy
 * compile and the placements it causes. Pure bookkeeping: no sockets, no
 * cgroups.
 */
import { AgentError } from '../errors.js';
import { DEVICE_FIELDS } from './authz.js';
import { checkRequestOverlap } from '../devices/index.js';
import type { DeviceRequest } from '../devices/request.js';
import type { Op } from './protocol.js';

/**
 * Tokens each op costs; ops not listed cost nothing. Reads that grow with the
 * tree cost more; every request that changes something (each a few cgroup
 * calls and an audit line) costs one, so a uid gets 20 a second: far more
 * than a user starts tasks, far less than a loop of them costs root.
 */
const COST: Partial<Record<Op, number>> = {
  list: 10,
  stats: 1,
  'job.create': 1,
  'step.create': 1,
  attach: 1,
  'task.place': 1,
  destroy: 1,
  signal: 1,
  freeze: 1,
  thaw: 1,
};
/** Ops whose cost grows with the tree: a few slots for all non-admin peers together. */
const SLOTTED: ReadonlySet<Op> = new Set(['list', 'stats']);
/**
 * Tokens a request carrying a device policy costs on top: its compile may
 * take tens of ms (overlapping wildcard rules), so a user gets 8 in a burst
 * and 4 a second, and they compile one at a time (see RpcServer).
 */
const DEVICES_COST = 4;

/** Does the request carry a device policy (to compile)? */
export function carriesDevices(req: object): boolean {
  return DEVICE_FIELDS.some((f) => (req as Record<string, unknown>)[f] !== undefined);
}

export interface RateOptions {
  /** Tokens a uid may spend in a burst. */
  burst: number;
  /** Tokens a uid gets back per second. */
  perSecond: number;
}

/**
 * 40 tokens, 20 a second: a live view that lists every 2 s and reads the stats
 * of 30 jobs each time stays inside it; a loop of list requests gets 2 a second.
 */
export const DEFAULT_RATE: RateOptions = { burst: 40, perSecond: 20 };

export class RateLimiter {
  private buckets = new Map<number, { tokens: number; at: number }>();

  constructor(private readonly o: RateOptions = DEFAULT_RATE) {}

  /** Spend what the request costs for uid (`cost`, by default its op's), or throw EBUSY saying when to retry. */
  take(uid: number, op: Op, now = Date.now(), cost = COST[op] ?? 0): void {
    if (cost === 0) return;
    const b = this.buckets.get(uid) ?? { tokens: this.o.burst, at: now };
    b.tokens = Math.min(this.o.burst, b.tokens + ((now - b.at) / 1000) * this.o.perSecond);
    b.at = now;
    if (b.tokens < cost) {
      this.buckets.set(uid, b);
      const wait = Math.ceil(((cost - b.tokens) / this.o.perSecond) * 1000);
      throw new AgentError('EBUSY', `uid ${uid} is sending too fast (${this.o.perSecond} tokens a second, this ${op} costs ${cost}); retry in ${wait} ms`);
    }
    b.tokens -= cost;
    this.buckets.set(uid, b);
    // Full buckets carry no information: forget them so the map stays small.
    if (this.buckets.size > 4096) for (const [u, x] of this.buckets) if (x.tokens + ((now - x.at) / 1000) * this.o.perSecond >= this.o.burst) this.buckets.delete(u);
  }

  /** Does the request hold one of the few slots non-admin peers share (a read that grows with the tree)? */
  static slotted(op: Op): boolean {
    return SLOTTED.has(op);
  }

  /** What a request costs a non-admin peer in tokens (0: not limited). */
  static costOf(req: { op: Op }): number {
    return (COST[req.op] ?? 0) + (carriesDevices(req) ? DEVICES_COST : 0);
  }
}

/**
 * Device rules (allow + deny, every policy in the request together) one
 * request may carry: an admin's up to 4,096, the largest policy the device
 * benchmark uses; anyone else's up to 256, so that no user can make the agent
 * compile for long. How far rules with wildcards may overlap is bounded by the
 * compiler itself (MAX_CELLS); bench/devices.ts prints compile ms by shape.
 */
export const MAX_RULES_ADMIN = 4096;
export const MAX_RULES_USER = 256;

/**
 * How far a non-admin peer's rules may overlap (patterns, see the compiler's
 * MAX_CELLS, 8,192 for admins): 90 "c M:*" against 90 "c *:N" with mixed
 * access took 50-80 ms to compile on the loop; 512 patterns cost a few ms.
 */
export const MAX_CELLS_USER = 512;

/**
 * E2BIG when a non-admin peer's rules (their paths resolved to numbers) overlap
 * past MAX_CELLS_USER; an admin's are bounded by the compiler itself.
 */
export function checkRuleOverlap(d: DeviceRequest, admin: boolean): void {
  if (admin) return;
  try {
    checkRequestOverlap(d, MAX_CELLS_USER);
  } catch (err) {
    if (err instanceof AgentError && err.code === 'E2BIG') throw new AgentError('E2BIG', `${err.message}; at most ${MAX_CELLS_USER} for a peer that is not root or an operator`);
    throw err;
  }
}

/** Throw E2BIG when req carries more device rules than its sender may send. */
export function checkRuleCount(req: object, admin: boolean): void {
  let n = 0;
  for (const key of DEVICE_FIELDS) {
    const d = (req as Record<string, { allow?: unknown[]; deny?: unknown[] } | undefined>)[key];
    if (d && typeof d === 'object') n += (d.allow?.length ?? 0) + (d.deny?.length ?? 0);
  }
  const max = admin ? MAX_RULES_ADMIN : MAX_RULES_USER;
  if (n > max) throw new AgentError('E2BIG', `${n} device rules in one request; at most ${max}${admin ? '' : ' for a peer that is not root or an operator'}`);
}

/**
 * Tasks one task.place may place: an admin's as many as the protocol takes (a
 * slurmstepd places every task of its node at once); anyone else's up to 16.
 * Each task is a /proc check, a directory and a move done in one turn of the
 * event loop: 512 of them took ~100 ms, which a user sending them in a loop
 * would put in front of every request of root's.
 */
export const MAX_TASKS_USER = 16;

/** Throw E2BIG when req places more tasks at once than its sender may. */
export function checkTaskCount(req: object, admin: boolean): void {
  const tasks = (req as { tasks?: unknown[] }).tasks;
  if (admin || !Array.isArray(tasks) || tasks.length <= MAX_TASKS_USER) return;
  throw new AgentError('E2BIG', `${tasks.length} tasks in one task.place; at most ${MAX_TASKS_USER} for a peer that is not root or an operator (send them in several requests)`);
}

/** At most n holders at once; the others wait in arrival order. */
export class Slots {
  private holders = 0;
  private waiting: (() => void)[] = [];

  constructor(private readonly n: number) {}

  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.holders >= this.n) await new Promise<void>((r) => this.waiting.push(r));
    else this.holders++;
    try {
      return await fn();
    } finally {
      const next = this.waiting.shift();
      // Handed on in a later turn, not a microtask: what the loop has waiting (root's requests) goes first.
      if (next) setImmediate(next);
      else this.holders--;
    }
  }
}
