/**
 * rpc/client: the typed TypeScript client for cgstepd, for the cgstep CLI
 * and for any controller written in TypeScript or JavaScript.
 *
 *   const c = await CgstepClient.connect('/run/cgstepd/cgstepd.sock');
 *   await c.request('step.create', { job: 12, step: 0, limits: { memory: 2**30 } });
 *   await c.request('task.place', { job: 12, step: 0, pid, task: 0, stepLimits: { memory: 2**30 } });
 *   c.close();
 * Errors come back as AgentError with the agent's code. Owns nothing but its
 * own connection.
 */
import net from 'node:net';
import type { z } from 'zod';
import { AgentError, type ErrorCode } from '../errors.js';
import { peerUcred } from './peercred.js';
import type { AgentEvent, Op, requestSchema } from './protocol.js';
import { PROTOCOL_VERSION, adminSocketPath } from './version.js';

export const DEFAULT_SOCKET = '/run/cgstepd/cgstepd.sock';

/** The uid the agent may run as besides root, from CGSTEP_AGENT_UID (0 when unset). */
function agentUidFromEnv(): number {
  const v = process.env.CGSTEP_AGENT_UID;
  if (v === undefined || v === '') return 0;
  if (!/^\d+$/.test(v) || Number(v) > 0xfffffffe) throw new AgentError('EINVAL', `CGSTEP_AGENT_UID must be a uid, got ${JSON.stringify(v)}`);
  return Number(v);
}

type RequestInput = z.input<typeof requestSchema>;
export type ArgsOf<O extends Op> = Omit<Extract<RequestInput, { op: O }>, 'op' | 'id' | 'v'>;

interface Pending { resolve: (v: unknown) => void; reject: (e: Error) => void; timer: NodeJS.Timeout | null }

export class CgstepClient {
  private nextId = 1;
  private pending = new Map<number, Pending>();
  private buf = '';
  private eventHandler: ((e: AgentEvent) => void) | null = null;
  private closedError: Error | null = null;

  private constructor(private readonly sock: net.Socket, private readonly timeoutMs: number) {
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => this.onData(d));
    const fail = (err: Error) => {
      this.closedError ??= err;
      err = this.closedError;
      for (const p of this.pending.values()) {
        if (p.timer) clearTimeout(p.timer);
        p.reject(err);
      }
      this.pending.clear();
    };
    sock.on('error', (err) => fail(new AgentError('EIO', `connection to cgstepd failed: ${err.message}`)));
    sock.on('close', () => fail(new AgentError('EIO', 'cgstepd closed the connection')));
  }

  /**
   * Connect to the agent's socket. A full listen backlog (EAGAIN) is retried with
   * bounded exponential back-off (1 ms doubling to 250 ms, within timeoutMs).
   * A socket that is missing or refusing (the agent not started yet, or
   * restarting) is retried the same way for up to waitMs (default 0: fail at
   * once, naming the path and what to check).
   */
  static async connect(socketPath = DEFAULT_SOCKET, opts: { timeoutMs?: number; waitMs?: number; onGiveUp?: (err: Error) => void; agentUid?: number } = {}): Promise<CgstepClient> {
    const timeoutMs = opts.timeoutMs ?? 30000;
    const deadline = Date.now() + timeoutMs;
    const waitUntil = Date.now() + (opts.waitMs ?? 0);
    for (let delay = 1; ; delay = Math.min(delay * 2, 250)) {
      try {
        return await CgstepClient.connectEither(socketPath, Math.max(1, deadline - Date.now()), opts.agentUid ?? agentUidFromEnv());
      } catch (err) {
        const errno = (err as { errno?: string }).errno;
        const retry = errno === 'EAGAIN' ? Date.now() + delay < deadline : (errno === 'ENOENT' || errno === 'ECONNREFUSED') && Date.now() + delay < waitUntil;
        if (!retry) {
          if (errno !== 'EAGAIN' && (opts.waitMs ?? 0) > 0) opts.onGiveUp?.(err as Error);
          throw err;
        }
        await new Promise((r) => setTimeout(r, delay));
      }
    }
  }

  /**
   * The admin socket beside the shared one first (root and operators reach
   * it: no other user's queued connections before theirs); the shared one
   * when it is not there (an agent older than it, or not started) or not ours
   * to open (EACCES: every other uid, one failed connect).
   */
  private static async connectEither(socketPath: string, timeoutMs: number, agentUid: number): Promise<CgstepClient> {
    try {
      return await CgstepClient.connectOnce(adminSocketPath(socketPath), timeoutMs, agentUid);
    } catch (err) {
      const errno = (err as { errno?: string }).errno;
      if (errno !== 'ENOENT' && errno !== 'ECONNREFUSED' && errno !== 'EACCES') throw err;
    }
    return CgstepClient.connectOnce(socketPath, timeoutMs, agentUid);
  }

  private static connectOnce(socketPath: string, timeoutMs: number, agentUid: number): Promise<CgstepClient> {
    return new Promise((resolve, reject) => {
      const s = net.connect(socketPath);
      const t = setTimeout(() => {
        s.destroy();
        reject(new AgentError('ETIMEDOUT', `no answer from cgstepd at ${socketPath} within ${timeoutMs} ms`));
      }, timeoutMs);
      s.once('connect', () => {
        clearTimeout(t);
        // Whoever listens first on a path gets what we send: talk only to root's (or the named agent uid's) server.
        let uid: number;
        try {
          uid = peerUcred(s).uid;
        } catch (err) {
          s.destroy();
          return reject(err);
        }
        if (uid !== 0 && uid !== agentUid) {
          s.destroy();
          return reject(new AgentError('EPERM', `refusing to talk to ${socketPath}: it is served by uid ${uid}, not by root${agentUid !== 0 ? ` or uid ${agentUid}` : ''} (set CGSTEP_AGENT_UID if the agent runs as another user)`));
        }
        resolve(new CgstepClient(s, timeoutMs));
      });
      s.once('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(t);
        if (err.code === 'EAGAIN') return reject(Object.assign(new AgentError('EBUSY', `cgstepd at ${socketPath} is not accepting connections fast enough (EAGAIN)`), { errno: 'EAGAIN' }));
        const why = err.code === 'ENOENT' ? 'no such socket' : err.code === 'ECONNREFUSED' ? 'nothing listening' : err.message;
        const hint = err.code === 'ENOENT' || err.code === 'ECONNREFUSED' ? '. Is cgstepd running? See --socket (CGSTEP_SOCKET) and --wait.' : '';
        reject(Object.assign(new AgentError(err.code === 'EACCES' ? 'EPERM' : 'EIO', `cannot connect to cgstepd at ${socketPath}: ${err.code ? `${err.code}: ${why}` : why}${hint}`), { errno: err.code }));
      });
    });
  }

  request<O extends Op>(op: O, args: ArgsOf<O>, opts: { timeoutMs?: number } = {}): Promise<any> {
    if (this.closedError) return Promise.reject(this.closedError);
    const id = this.nextId++;
    const msg = JSON.stringify({ v: PROTOCOL_VERSION, id, op, ...args }) + '\n';
    return new Promise((resolve, reject) => {
      const ms = opts.timeoutMs ?? this.timeoutMs;
      const timer = ms > 0 ? setTimeout(() => {
        this.pending.delete(id);
        reject(new AgentError('ETIMEDOUT', `cgstepd did not answer ${op} within ${ms} ms`));
      }, ms) : null;
      this.pending.set(id, { resolve, reject, timer });
      this.sock.write(msg);
    });
  }

  /** Subscribe to events; the connection then carries them until closed. */
  async events(handler: (e: AgentEvent) => void): Promise<void> {
    this.eventHandler = handler;
    await this.request('events', {}, { timeoutMs: this.timeoutMs });
  }

  /** Resolves when the agent closes the connection. */
  closed(): Promise<void> {
    return new Promise((resolve) => {
      if (this.sock.destroyed) resolve();
      else this.sock.once('close', () => resolve());
    });
  }

  private onData(d: string): void {
    this.buf += d;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const text = this.buf.slice(0, nl);
      this.buf = this.buf.slice(nl + 1);
      if (!text) continue;
      let msg: any;
      try {
        msg = JSON.parse(text);
      } catch {
        continue;
      }
      if (typeof msg.event === 'string') {
        this.eventHandler?.(msg as AgentEvent);
        continue;
      }
      const p = this.pending.get(msg.id);
      if (!p) {
        // A reply with id null and no request of ours is the agent refusing the
        // connection (EPERM, E2BIG): it is why the connection is about to close.
        if (msg.id === null && msg.ok === false) {
          this.closedError ??= new AgentError(msg.error.code, msg.error.message);
          for (const q of this.pending.values()) q.reject(this.closedError);
        }
        continue;
      }
      this.pending.delete(msg.id);
      if (p.timer) clearTimeout(p.timer);
      if (msg.ok) p.resolve(msg.result);
      else p.reject(new AgentError(msg.error?.code as ErrorCode, msg.error?.message ?? 'unknown error'));
    }
  }

  close(): void {
    this.sock.end();
    this.sock.destroy();
  }
}
