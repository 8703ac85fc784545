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
 */
import fs from 'node:fs';
import { AgentError, fromNodeError } from '../errors.js';
import type { DeviceRequest } from './request.js';
import { accessMask, maskToAccess, splitDev, type DeviceNode } from './rules.js';

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
