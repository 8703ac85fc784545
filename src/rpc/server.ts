/**
 * rpc/server: the agent's Unix stream socket.
 *
 * Owns the socket file, connections, line framing, limits, peer checks and
 * request validation; hands each valid request to a handler and writes its
 * reply. One bad line never harms another connection or the agent: a line
 * that is not JSON or fails the schema gets a typed error; an over-long line
 * gets E2BIG and the connection is closed; a client that stops reading is
 * paused, then dropped, so memory stays bounded. Knows nothing of cgroups.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { Logger } from 'pino';
import { AgentError, type ErrorCode } from '../errors.js';
import { peerCred, type PeerCred } from './peercred.js';
import { MAX_LINE_BYTES, PROTOCOL_VERSION, READ_ONLY_OPS, majorOf, requestSchema, type AgentEvent, type Reply, type Request } from './protocol.js';

export interface Peer extends PeerCred { readOnly: boolean }

export interface ServerOptions {
  socketPath: string;
  /** uids allowed to act (root always is). */
  allowUids: number[];
  /** gids whose members may use read-only ops (status, list, stats, events). */
  readOnlyGids: number[];
  maxConnections: number;
  log: Logger;
  handle: (req: Request, peer: Peer) => Promise<unknown>;
  /** Called once per request with its op ('invalid' when unparsable), latency and error code. */
  observe?: (op: string, seconds: number, errorCode?: string) => void;
  /** Subscribe a connection to events; returns the unsubscribe function. */
  subscribe: (send: (e: AgentEvent) => void) => () => void;
}

/** Output a client has not read, past which we stop reading from it, and past which we drop it. */
const PAUSE_BYTES = 1 << 20;
const DROP_BYTES = 8 << 20;

export class RpcServer {
  private server: net.Server | null = null;
  private conns = new Set<net.Socket>();
  private inflight = 0;
  readonly counters = { connections: 0, requests: 0, errors: 0, refused: 0 };

  constructor(private readonly o: ServerOptions) {}

  async listen(): Promise<void> {
    const dir = path.dirname(this.o.socketPath);
    fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
    checkSocketDir(dir, this.o.log);
    await removeStaleSocket(this.o.socketPath);
    const server = net.createServer({ allowHalfOpen: false }, (s) => this.accept(s));
    server.maxConnections = this.o.maxConnections;
    server.on('drop', () => {
      this.counters.refused++;
      this.o.log.warn({ max: this.o.maxConnections }, 'connection refused: too many connections');
    });
    const old = process.umask(0o177); // the socket is created 0600, with no window of a wider mode
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        // A deep backlog: a burst of connects waits in the kernel instead of failing with EAGAIN.
        server.listen({ path: this.o.socketPath, backlog: 4096 }, () => {
          server.off('error', reject);
          resolve();
        });
      });
    } finally {
      process.umask(old);
    }
    fs.chmodSync(this.o.socketPath, 0o600);
    this.server = server;
  }

  get connectionCount(): number {
    return this.conns.size;
  }

  private accept(s: net.Socket): void {
    let peer: Peer;
    try {
      const cred = peerCred(s);
      const actor = cred.uid === 0 || this.o.allowUids.includes(cred.uid);
      peer = { ...cred, readOnly: !actor && this.o.readOnlyGids.includes(cred.gid) };
      if (!actor && !peer.readOnly) {
        this.o.log.warn({ peerPid: cred.pid, peerUid: cred.uid }, 'connection refused: uid not allowed');
        this.counters.refused++;
        s.end(line({ id: null, ok: false, error: { code: 'EPERM', message: `uid ${cred.uid} is not allowed to use cgstepd (see --allow-uid)` } }));
        return;
      }
    } catch (err) {
      this.o.log.error({ err }, 'cannot identify peer');
      s.destroy();
      return;
    }
    this.counters.connections++;
    this.conns.add(s);
    this.o.log.info({ peerPid: peer.pid, peerUid: peer.uid, readOnly: peer.readOnly }, 'connection accepted');
    let buf: Buffer[] = [];
    let buffered = 0;
    let unsubscribe: (() => void) | null = null;
    s.on('data', (chunk: Buffer) => {
      let start = 0;
      for (let nl = chunk.indexOf(10); nl >= 0; nl = chunk.indexOf(10, start)) {
        const piece = chunk.subarray(start, nl);
        start = nl + 1;
        if (buffered + piece.length > MAX_LINE_BYTES) return this.tooLong(s);
        const text = buf.length ? Buffer.concat([...buf, piece]).toString('utf8') : piece.toString('utf8');
        buf = [];
        buffered = 0;
        if (text.trim() === '') continue;
        void this.onLine(s, text, peer, (u) => (unsubscribe = u));
      }
      if (start < chunk.length) {
        const rest = chunk.subarray(start);
        buffered += rest.length;
        if (buffered > MAX_LINE_BYTES) return this.tooLong(s);
        buf.push(Buffer.from(rest));
      }
    });
    s.on('drain', () => s.resume());
    s.on('error', () => undefined);
    s.on('close', () => {
      this.conns.delete(s);
      unsubscribe?.();
    });
  }

  private tooLong(s: net.Socket): void {
    this.counters.errors++;
    // Discard the rest of what it sends, half-close after the reply, and drop it
    // after a second. Destroying at once (or leaving its bytes unread) makes the
    // kernel reset the connection, and the client may never see the reply.
    s.removeAllListeners('data');
    s.on('data', () => undefined);
    s.resume();
    const drop = setTimeout(() => s.destroy(), 1000);
    drop.unref();
    s.once('close', () => clearTimeout(drop));
    s.end(line({ id: null, ok: false, error: { code: 'E2BIG', message: `request line longer than ${MAX_LINE_BYTES} bytes; closing the connection` } }));
  }

  private async onLine(s: net.Socket, text: string, peer: Peer, setUnsub: (u: () => void) => void): Promise<void> {
    this.counters.requests++;
    let id: string | number | null = null;
    let op = 'invalid';
    let reply: Reply;
    const t0 = performance.now();
    this.inflight++;
    try {
      let raw: unknown;
      try {
        raw = JSON.parse(text);
      } catch (err) {
        throw new AgentError('EINVAL', `malformed JSON: ${(err as Error).message}`);
      }
      if (raw && typeof raw === 'object' && !Array.isArray(raw)) {
        const rid = (raw as { id?: unknown }).id;
        if ((typeof rid === 'string' && rid.length <= 128) || (typeof rid === 'number' && Number.isSafeInteger(rid))) id = rid;
      }
      const v = (raw as { v?: unknown })?.v;
      if (typeof v === 'string' && /^\d+\.\d+$/.test(v) && majorOf(v) !== majorOf(PROTOCOL_VERSION)) {
        throw new AgentError('EPROTO', `client speaks protocol ${v}, this agent speaks ${PROTOCOL_VERSION}: upgrade the client or the agent`);
      }
      const parsed = requestSchema.safeParse(raw);
      if (!parsed.success) throw new AgentError('EINVAL', describeIssues(parsed.error.issues));
      const req = parsed.data;
      op = req.op;
      if (peer.readOnly && !READ_ONLY_OPS.has(req.op)) throw new AgentError('EPERM', `uid ${peer.uid} may only use read-only requests; ${req.op} needs an allowed uid`);
      if (req.op === 'events') {
        reply = { id, ok: true, result: { subscribed: true } };
        this.write(s, reply);
        setUnsub(this.o.subscribe((e) => this.write(s, e)));
        return;
      }
      const result = await this.o.handle(req, peer);
      reply = { id, ok: true, result };
    } catch (err) {
      this.counters.errors++;
      reply = { id, ok: false, error: errorBody(err) };
      if (!(err instanceof AgentError)) this.o.log.error({ err }, 'request failed unexpectedly');
    } finally {
      this.inflight--;
    }
    this.o.observe?.(op, (performance.now() - t0) / 1e3, reply.ok ? undefined : reply.error.code);
    this.write(s, reply);
  }

  private write(s: net.Socket, msg: unknown): void {
    if (s.destroyed || !s.writable) return;
    s.write(line(msg));
    if (s.writableLength > DROP_BYTES) {
      this.o.log.warn({ pending: s.writableLength }, 'client does not read its replies; dropping the connection');
      s.destroy();
    } else if (s.writableLength > PAUSE_BYTES) s.pause();
  }

  /**
   * Stop accepting, then let in-flight requests finish: those being handled and
   * those already written to a connection (quiet for 50 ms), bounded by graceMs.
   * Then close the connections and remove the socket file.
   */
  async close(graceMs = 5000): Promise<void> {
    const server = this.server;
    this.server = null;
    if (server) server.close();
    const deadline = Date.now() + graceMs;
    let seen = -1;
    while (Date.now() < deadline && (this.inflight > 0 || seen !== this.counters.requests)) {
      seen = this.counters.requests;
      await new Promise((r) => setTimeout(r, 50));
    }
    for (const s of this.conns) s.end();
    for (const s of this.conns) s.destroy();
    try {
      fs.unlinkSync(this.o.socketPath);
    } catch {
      /* already gone */
    }
  }
}

function line(msg: unknown): string {
  return JSON.stringify(msg) + '\n';
}

export function errorBody(err: unknown): { code: ErrorCode; message: string } {
  if (err instanceof AgentError) return { code: err.code, message: err.message };
  return { code: 'EINTERNAL', message: (err as Error)?.message ?? String(err) };
}

function describeIssues(issues: readonly { path: PropertyKey[]; message: string; code?: string; keys?: string[] }[]): string {
  const first = issues.slice(0, 3).map((i) => {
    const where = i.path.length ? i.path.map(String).join('.') : 'request';
    if (i.code === 'unrecognized_keys' && i.keys) return `${where}: unknown field(s) ${i.keys.join(', ')}`;
    return `${where}: ${i.message}`;
  });
  return `invalid request: ${first.join('; ')}${issues.length > 3 ? ` (+${issues.length - 3} more)` : ''}`;
}

/**
 * The socket's directory must not let others replace the socket: refuse one that
 * is group- or world-writable without the sticky bit, or owned by another user.
 */
export function checkSocketDir(dir: string, log: Logger): void {
  const st = fs.statSync(dir);
  const uid = process.getuid?.() ?? 0;
  if (st.uid !== uid && st.uid !== 0) throw new AgentError('EPERM', `socket directory ${dir} is owned by uid ${st.uid}; it must belong to root or to the agent's user`);
  const sticky = (st.mode & 0o1000) !== 0;
  if ((st.mode & 0o022) !== 0 && !sticky) throw new AgentError('EPERM', `socket directory ${dir} is writable by others (mode ${(st.mode & 0o7777).toString(8)}); use a directory only root can write, e.g. /run/cgstepd`);
  if ((st.mode & 0o002) !== 0) log.warn({ dir, mode: (st.mode & 0o7777).toString(8) }, 'socket directory is world-writable (sticky); prefer /run/cgstepd');
}

/** A socket file left by a dead agent is removed; a live agent on it is an error. */
async function removeStaleSocket(p: string): Promise<void> {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(p);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new AgentError('EEXIST', `${p} exists and is not a socket; refusing to replace it`);
  const live = await new Promise<boolean>((resolve) => {
    const c = net.connect(p);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
  if (live) throw new AgentError('EBUSY', `another cgstepd is already listening on ${p}`);
  fs.unlinkSync(p);
}
