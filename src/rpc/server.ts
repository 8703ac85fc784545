/**
 * rpc/server: the agent's Unix stream sockets: the shared one, and the admin
 * socket beside it (PATH.admin: root's, 0600, opened to each operator uid by
 * an ACL), which no other user's queued connections can stand in front of.
 *
 * Owns the socket files, connections, line framing, limits, peer checks and
 * request validation; hands each valid request to a handler and writes its
 * reply. One bad line never harms another connection or the agent: a line
 * that is not JSON or fails the schema gets a typed error; an over-long line
 * gets E2BIG and the connection is closed; a client that stops reading is
 * paused, then dropped, so memory stays bounded. Knows nothing of cgroups.
 */
import net from 'node:net';
import path from 'node:path';
import type { Logger } from 'pino';
import { AgentError, type ErrorCode } from '../errors.js';
import { grantUsers, prepareSocketDir, removeOwnSocket, removeStaleSocket, settleSocket } from '../sys/privdir.js';
import { peerGroups, peerHungUp, roleOf, ucredOf, type Peer, type Role, type Ucred } from './peercred.js';
import { UnixListener } from './listener.js';
import { libc } from '../sys/libc.js';
import type { AgentEvent, Reply, Request } from './protocol.js';
import { parseRequest } from './validate.js';
import { MAX_LINE_BYTES, PROTOCOL_VERSION, READ_ONLY_OPS, majorOf, adminSocketPath } from './version.js';
import { RateLimiter, Slots, DEFAULT_RATE, carriesDevices, checkRuleCount, checkTaskCount, type RateOptions } from './limits.js';
import { Streamed } from './stream.js';
import { LineReader, TOO_LONG } from './lines.js';

export interface ServerOptions {
  socketPath: string;
  /** uids that act on everything, as root does. */
  operatorUids: number[];
  /** uids allowed to act on their own jobs. */
  allowUids: number[];
  /** gids whose members (primary or supplementary) may use read-only ops (status, list, stats, events). */
  readOnlyGids: number[];
  /** Connections at once; the last ADMIN_RESERVED of them only admin peers may take. */
  maxConnections: number;
  /** The socket file's mode; default from socketModeFor. */
  socketMode?: number;
  /** The socket file's group (gid); default: the agent's. */
  socketGroup?: number;
  /** Connections at once per non-admin uid. */
  maxUserConnections?: number;
  /** A non-admin connection with nothing running and nothing sent for this long is closed, ms. */
  idleTimeoutMs?: number;
  /** The rate of list/stats per non-admin uid. */
  rate?: RateOptions;
  log: Logger;
  handle: (req: Request, peer: Peer) => Promise<unknown>;
  /** Called once per request with its op ('invalid' when unparsable), latency and error code. */
  observe?: (op: string, seconds: number, errorCode?: string) => void;
  /** Subscribe a connection to the events its peer may see; returns the unsubscribe function. */
  subscribe: (send: (e: AgentEvent) => void, peer: Peer) => () => void;
}

/** Output a client has not read, past which we stop reading from it, and past which we drop it. */
const PAUSE_BYTES = 1 << 20;
const DROP_BYTES = 8 << 20;
/** Events a non-admin subscriber has not read, past which it is dropped (see publish). */
const EVENTS_DROP_BYTES = 256 << 10;
/** Slots only admin peers may take, so that no number of other connections locks root out. */
export const ADMIN_RESERVED = 64;
const DEFAULT_USER_CONNECTIONS = 32;
/** How long, and how many at once, refused connections wait for the peer to read why. */
const REFUSED_GRACE_MS = 250;
const REFUSED_LINGER = 256;
const DEFAULT_IDLE_MS = 60_000;
/** A request line must be complete this long after its first byte (non-admin peers). */
const LINE_TIMEOUT_MS = 10_000;
/** Requests of one non-admin connection that run at once. */
const USER_INFLIGHT = 4;
/** list/stats requests of all non-admin peers together that run at once. */
const EXPENSIVE_AT_ONCE = 4;
/**
 * Connections the shared socket accepts a second (in bursts of a second's
 * worth). Beyond it the kernel's listen queue holds them, and a connect loop
 * sleeps in connect() once that is full, instead of costing the agent a peer
 * lookup and a refusal per connection as fast as it can connect. The admin
 * socket has no rate: root and the operators never wait behind that queue.
 */
const SHARED_ACCEPTS_PER_SECOND = 1000;
/** The kernel's queue of connections not yet accepted: a burst of connects waits there instead of failing with EAGAIN. */
const LISTEN_BACKLOG = 4096;

/** One accepted connection. */
interface Conn {
  s: net.Socket;
  peer: Peer;
  inflight: number;
  /** What the peer sent that has not run yet. */
  lines: LineReader;
  /** Reading paused because complete lines wait (non-admin peers). */
  backlogged: boolean;
  /** A pump is due on the loop's next turn (non-admin peers). */
  pumpSoon: boolean;
  unsubscribe: (() => void) | null;
  lineTimer: NodeJS.Timeout | null;
  /** Streamed replies of this connection, one after another. */
  streams: Promise<void>;
  /** While one is being written: the lines that wait for it to end. */
  held: string[] | null;
  /** Requests of this connection running now (admin and others alike). */
  running: number;
  /** The peer half-closed: its lines are answered, then the connection is ended. */
  ended: boolean;
  /** An ended events subscriber: looks every HANGUP_CHECK_MS for its peer to close altogether (see watchHangup). */
  hangupTimer: NodeJS.Timeout | null;
  /** Event lines of this loop turn not yet written (see publish), and their length. */
  events: string[] | null;
  eventChars: number;
}

/** How often an events subscriber that half-closed is looked at for a peer that has gone altogether, ms. */
const HANGUP_CHECK_MS = 1000;

/** Event lines to one subscriber written at once when they reach this length, else at the end of the loop's turn. */
const EVENT_BATCH_CHARS = 64 * 1024;

/** Bytes of a streamed reply written at once. */
const STREAM_CHUNK = 64 * 1024;
/** Lines (events, other replies) that may wait behind one streamed reply. */
const HELD_MAX = 10_000;

/** What finish returns for a reply it has already written in pieces. */
const STREAMED = Symbol('streamed');

export class RpcServer {
  /** The shared socket (every peer the socket mode lets in), and the admin socket (see adminSocketPath). */
  private listeners: UnixListener[] = [];
  private conns = new Set<net.Socket>();
  /** Open connections per non-admin uid. */
  private perUid = new Map<number, number>();
  private lastRefusalLog = 0;
  /** Non-admin connections accepted (all, and at the last line that said so), and when that line was written. */
  private accepted = 0;
  private acceptedAtLastLog = 0;
  private lastAcceptLog = 0;
  /** Refused connections still waiting for their peer to read the reason. */
  private lingering = 0;
  private refusedAtLastLog = 0;
  private inflight = 0;
  /** The inode of the socket file this server made: only that file is removed at close. */
  private socketIno = -1;
  private adminSocketIno = -1;
  /** The event being published, and its line (see publish). */
  private lastEvent: AgentEvent | null = null;
  private lastEventLine = '';
  /** Subscribers with event lines waiting for the end of this turn, and the one immediate that writes them. */
  private readonly eventsDue = new Set<Conn>();
  private eventFlush: NodeJS.Immediate | null = null;
  readonly counters = { connections: 0, requests: 0, errors: 0, refused: 0 };
  private readonly rate: RateLimiter;
  private readonly expensive = new Slots(EXPENSIVE_AT_ONCE);
  private readonly compiling = new Slots(1);

  constructor(private readonly o: ServerOptions) {
    this.rate = new RateLimiter(o.rate ?? DEFAULT_RATE);
  }

  async listen(): Promise<void> {
    prepareSocketDir(this.o.socketPath, 'socket directory');
    await removeStaleSocket(this.o.socketPath);
    const shared = this.listenOn(this.o.socketPath, SHARED_ACCEPTS_PER_SECOND);
    const mode = socketModeFor(this.o);
    this.socketIno = settleSocket(this.o.socketPath, this.o.socketGroup, mode);
    this.listeners.push(shared);
    const admin = adminSocketPath(this.o.socketPath);
    await removeStaleSocket(admin);
    this.listeners.push(this.listenOn(admin));
    this.adminSocketIno = settleSocket(admin, undefined, undefined);
    const operators = this.openToOperators(admin);
    this.o.log.info({ socket: this.o.socketPath, mode: mode.toString(8), gid: this.o.socketGroup ?? process.getgid?.(), adminSocket: admin, operators }, 'socket access');
  }

  /** The admin socket is root's, 0600; each non-root operator uid gets rw by an ACL. Where the filesystem has no ACLs, operators use the shared socket (said once). */
  private openToOperators(admin: string): number[] {
    const uids = [...new Set(this.o.operatorUids.filter((u) => u !== 0))];
    if (!uids.length) return [];
    try {
      grantUsers(admin, uids);
      return uids;
    } catch (err) {
      this.o.log.warn({ err, adminSocket: admin }, 'cannot open the admin socket to the operator uids (no POSIX ACLs here?); they use the shared socket');
      return [];
    }
  }

  /** A listener on file, made 0600 (umask: no window of a wider mode), at perSecond accepts a second or without a rate. */
  private listenOn(file: string, perSecond?: number): UnixListener {
    const l = new UnixListener({
      path: file,
      backlog: LISTEN_BACKLOG,
      perSecond,
      onAccept: (fd) => this.onConnect(fd),
      onError: (err) => this.o.log.error({ err, socket: file }, 'accepting a connection failed; accepting again shortly'),
    });
    const old = process.umask(0o177);
    try {
      l.listen();
    } finally {
      process.umask(old);
    }
    return l;
  }

  get connectionCount(): number {
    return this.conns.size;
  }

  /**
   * Every admin connection is logged; other peers' at most one line a second
   * (with how many were accepted since), so a user's connect loop cannot
   * flood journald and push root's audit lines out of its rate limit.
   */
  private logAccepted(peer: Peer): void {
    const line = { peerPid: peer.pid, peerUid: peer.uid, role: peer.role };
    if (peer.role === 'admin') {
      this.o.log.info(line, 'connection accepted');
      return;
    }
    this.accepted++;
    const now = Date.now();
    if (now - this.lastAcceptLog < 1000) return;
    this.lastAcceptLog = now;
    this.o.log.info({ ...line, acceptedSinceLastLog: this.accepted - this.acceptedAtLastLog }, 'connection accepted');
    this.acceptedAtLastLog = this.accepted;
  }

  /** A connection just accepted: its peer's credentials and role decide whether it is served or told why not. */
  private onConnect(fd: number): void {
    let cred: Ucred;
    let role: Role | null;
    try {
      cred = ucredOf(fd);
      role = roleOf(cred, () => peerGroups(fd), this.o);
    } catch (err) {
      this.o.log.error({ err }, 'cannot identify peer');
      libc().close(fd);
      return;
    }
    const s = this.socketOf(fd);
    if (!s) return;
    if (role) return this.accept(s, { ...cred, role });
    s.on('error', (err) => this.o.log.debug({ err }, 'connection error'));
    this.refuse(s, cred.pid, cred.uid, 'EPERM', `uid ${cred.uid} is not allowed to use cgstepd (see --allow-uid, --operator-uid, --read-only-gid)`);
  }

  /** The accepted fd as a Socket (it owns the fd from here); null, the fd closed, when Node cannot take it. */
  private socketOf(fd: number): net.Socket | null {
    try {
      return new net.Socket({ fd, readable: true, writable: true, allowHalfOpen: true });
    } catch (err) {
      this.o.log.error({ err }, 'cannot open an accepted connection');
      libc().close(fd);
      return null;
    }
  }

  private accept(s: net.Socket, peer: Peer): void {
    // Before anything else: a peer that resets must never become an unhandled 'error'.
    s.on('error', (err) => this.o.log.debug({ err }, 'connection error'));
    const full = this.full(peer);
    if (full) return this.refuse(s, peer.pid, peer.uid, 'EMFILE', full);
    this.counters.connections++;
    this.conns.add(s);
    if (peer.role !== 'admin') this.perUid.set(peer.uid, (this.perUid.get(peer.uid) ?? 0) + 1);
    this.logAccepted(peer);
    const c: Conn = { s, peer, inflight: 0, lines: new LineReader(MAX_LINE_BYTES), backlogged: false, pumpSoon: false, unsubscribe: null, lineTimer: null, streams: Promise.resolve(), held: null, running: 0, ended: false, hangupTimer: null, events: null, eventChars: 0 };
    s.on('data', (chunk: Buffer) => {
      c.lines.push(chunk);
      this.pump(c);
    });
    s.on('drain', () => {
      this.pump(c);
      if (!c.backlogged) s.resume();
    });
    // `printf '%s\n' "$req" | socat - UNIX-CONNECT:...` half-closes after its
    // last line and reads on: what it sent is answered before the agent ends its side.
    s.on('end', () => {
      c.ended = true;
      if (c.lines.pending > 0) c.lines.push(Buffer.from('\n')); // a last line ended by the close itself
      this.pump(c);
      this.endIfDone(c);
      this.watchHangup(c);
    });
    if (peer.role !== 'admin') {
      // Idle non-admin connections are closed; a request still running or an events subscription is not idle.
      s.setTimeout(this.o.idleTimeoutMs ?? DEFAULT_IDLE_MS);
      s.on('timeout', () => {
        if (c.inflight > 0 || c.unsubscribe) return;
        this.o.log.debug({ peerUid: peer.uid }, 'closing an idle connection');
        s.destroy();
      });
    }
    s.on('close', () => {
      this.conns.delete(s);
      if (c.lineTimer) clearTimeout(c.lineTimer);
      if (c.hangupTimer) clearInterval(c.hangupTimer);
      // Lines a closed connection sent and nothing has run yet: no one is left to read their replies.
      c.lines.clear();
      c.events = null;
      this.eventsDue.delete(c);
      if (peer.role !== 'admin') {
        const n = (this.perUid.get(peer.uid) ?? 1) - 1;
        if (n > 0) this.perUid.set(peer.uid, n);
        else this.perUid.delete(peer.uid);
      }
      c.unsubscribe?.();
    });
  }

  /**
   * Run the lines received: all at once for admin peers; for the others
   * USER_INFLIGHT at a time, each next one on the loop's next turn, and no
   * more is read from the peer while a complete line waits (so one connection
   * cannot pipeline thousands of requests into the agent, nor hold the loop
   * with lines that are answered without I/O).
   */
  private pump(c: Conn): void {
    const admin = c.peer.role === 'admin';
    const max = admin ? Infinity : USER_INFLIGHT;
    // A peer that does not read its replies starts no more requests: lines it sent wait, costing no replies.
    while (c.inflight < max && (admin || c.s.writableLength <= PAUSE_BYTES)) {
      const text = c.lines.next();
      if (text === null) break;
      if (text === TOO_LONG) {
        c.lines.clear();
        return this.tooLong(c.s);
      }
      if (text.trim() === '') continue;
      // Admin peers are trusted with concurrency: their lines run at once.
      if (admin) {
        void this.onLine(c, text);
        continue;
      }
      c.inflight++;
      void this.onLine(c, text).finally(() => {
        c.inflight--;
        if (!c.pumpSoon) {
          // One pending turn per connection, however many of its lines end at once.
          c.pumpSoon = true;
          setImmediate(() => {
            c.pumpSoon = false;
            this.pump(c);
          });
        }
      });
    }
    const backlogged = !admin && c.lines.hasLine();
    if (backlogged && !c.backlogged) c.s.pause();
    else if (!backlogged && c.backlogged && c.s.writableLength <= PAUSE_BYTES) c.s.resume();
    c.backlogged = backlogged;
    this.watchPartialLine(c, c.lines.pending > 0 && !backlogged);
  }

  /** A non-admin peer's line must be complete within the line timeout of its first byte (no slowloris). */
  private watchPartialLine(c: Conn, partial: boolean): void {
    if (c.peer.role === 'admin') return;
    if (!partial) {
      if (c.lineTimer) clearTimeout(c.lineTimer);
      c.lineTimer = null;
      return;
    }
    if (c.lineTimer) return;
    c.lineTimer = setTimeout(() => {
      this.o.log.debug({ peerUid: c.peer.uid }, 'closing a connection whose request line never ended');
      this.counters.errors++;
      c.s.end(line({ id: null, ok: false, error: { code: 'ETIMEDOUT', message: 'request line not finished in time; closing the connection' } }));
      c.s.destroy();
    }, Math.min(this.o.idleTimeoutMs ?? DEFAULT_IDLE_MS, LINE_TIMEOUT_MS));
    c.lineTimer.unref();
  }

  /** Why this peer may not open one more connection now, or null when it may. */
  private full(peer: Peer): string | null {
    const max = this.o.maxConnections;
    if (peer.role === 'admin') return this.conns.size >= max ? `too many connections (${max})` : null;
    const perUid = this.o.maxUserConnections ?? DEFAULT_USER_CONNECTIONS;
    if ((this.perUid.get(peer.uid) ?? 0) >= perUid) return `uid ${peer.uid} already has ${perUid} connections open`;
    const shared = Math.max(0, max - ADMIN_RESERVED);
    return this.conns.size >= shared ? `too many connections (${shared} for non-admin peers)` : null;
  }

  /**
   * A refused peer is told why in one line and closed: it takes no slot. Its
   * bytes are read and dropped and the socket half-closed, so that the peer
   * reads the reason rather than EPIPE; it is destroyed when the peer closes or
   * after REFUSED_GRACE_MS, and at once when REFUSED_LINGER others are already
   * waiting, so a connect flood holds a bounded number of descriptors.
   */
  private refuse(s: net.Socket, pid: number, uid: number, code: ErrorCode, message: string): void {
    this.counters.refused++;
    // At most one line a second: a connect flood must not turn into a log flood.
    const now = Date.now();
    if (now - this.lastRefusalLog >= 1000) {
      this.o.log.warn({ peerPid: pid, peerUid: uid, code, reason: message, refusedSinceLastLog: this.counters.refused - this.refusedAtLastLog }, 'connection refused');
      this.lastRefusalLog = now;
      this.refusedAtLastLog = this.counters.refused;
    }
    s.on('data', () => undefined);
    this.o.log.flush();
    s.end(line({ id: null, ok: false, error: { code, message } }));
    if (this.lingering >= REFUSED_LINGER) {
      s.destroy();
      return;
    }
    this.lingering++;
    const drop = setTimeout(() => s.destroy(), REFUSED_GRACE_MS);
    drop.unref();
    s.once('close', () => {
      clearTimeout(drop);
      this.lingering--;
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

  /**
   * An events subscriber whose peer has stopped sending is kept (a half-closed
   * `socat` still reads its events), until the peer has gone altogether: then
   * it is closed, at once or at the next look. Nothing else would end it: it
   * is never idle, and only a write to it fails, which no event of another
   * uid's jobs (or none at all) brings; a uid's interrupted subscribers would
   * hold its connection slots, and root's all of them.
   */
  private watchHangup(c: Conn): void {
    if (!c.ended || !c.unsubscribe || c.hangupTimer || c.s.destroyed) return;
    if (peerHungUp(c.s)) {
      c.s.destroy();
      return;
    }
    c.hangupTimer = setInterval(() => {
      if (peerHungUp(c.s)) c.s.destroy();
    }, HANGUP_CHECK_MS);
    c.hangupTimer.unref();
  }

  /** A half-closed connection with nothing left to run, stream or publish is ended. */
  private endIfDone(c: Conn): void {
    if (c.ended && c.running === 0 && c.held === null && !c.unsubscribe && !c.lines.hasLine() && !c.s.destroyed) c.s.end();
  }

  private async onLine(c: Conn, text: string): Promise<void> {
    c.running++;
    try {
      await this.runLine(c, text);
    } finally {
      c.running--;
      this.endIfDone(c);
    }
  }

  private async runLine(c: Conn, text: string): Promise<void> {
    const { s, peer } = c;
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
      const req = parseRequest(raw);
      op = req.op;
      if (peer.role === 'reader' && !READ_ONLY_OPS.has(req.op)) throw new AgentError('EPERM', `uid ${peer.uid} may only use read-only requests; ${req.op} needs an allowed uid`);
      checkRuleCount(req, peer.role === 'admin');
      checkTaskCount(req, peer.role === 'admin');
      if (req.op === 'events') {
        reply = { id, ok: true, result: { subscribed: true } };
        this.write(c, reply);
        c.unsubscribe ??= this.o.subscribe((e) => this.publish(c, e), peer);
        this.watchHangup(c);
        return;
      }
      let result: unknown;
      const cost = peer.role === 'admin' ? 0 : RateLimiter.costOf(req);
      if (cost > 0) {
        this.rate.take(peer.uid, req.op, Date.now(), cost);
        // A device policy compiles on the loop: one such request of all non-admin peers at a time.
        const slots = carriesDevices(req) ? this.compiling : RateLimiter.slotted(req.op) ? this.expensive : null;
        result = slots ? await slots.run(async () => this.finish(c, id, await this.o.handle(req, peer))) : await this.finish(c, id, await this.o.handle(req, peer));
      } else {
        result = await this.o.handle(req, peer);
        if (result instanceof Streamed) result = await this.finish(c, id, result);
      }
      if (result === STREAMED) {
        this.o.observe?.(op, (performance.now() - t0) / 1e3);
        return;
      }
      reply = { id, ok: true, result };
    } catch (err) {
      this.counters.errors++;
      reply = { id, ok: false, error: errorBody(err) };
      if (!(err instanceof AgentError)) this.o.log.error({ err }, 'request failed unexpectedly');
    } finally {
      this.inflight--;
    }
    this.o.observe?.(op, (performance.now() - t0) / 1e3, reply.ok ? undefined : reply.error.code);
    this.write(c, reply);
  }

  /**
   * A plain result is returned for onLine to send; a Streamed one is written
   * here, item by item, waiting for the client to read when it falls behind,
   * so a reply of megabytes never blocks the loop nor sits whole in memory.
   */
  private async finish(c: Conn, id: string | number | null, result: unknown): Promise<unknown> {
    if (!(result instanceof Streamed)) return result;
    const prev = c.streams;
    const mine = prev.then(() => this.stream(c, id, result));
    c.streams = mine;
    await mine;
    return STREAMED;
  }

  private async stream(c: Conn, id: string | number | null, result: Streamed): Promise<void> {
    const { s } = c;
    this.flushEvents(c);
    c.held = [];
    try {
      // A non-admin peer that stops reading mid-reply would hold its slot for list/stats for ever: it is dropped instead.
      await this.streamItems(s, id, result, c.peer.role === 'admin' ? null : Math.min(this.o.idleTimeoutMs ?? DEFAULT_IDLE_MS, LINE_TIMEOUT_MS));
    } catch (err) {
      // Half a line is on the wire: the connection cannot carry anything after it.
      this.o.log.error({ err }, 'streamed reply failed; closing the connection');
      s.destroy();
    } finally {
      const held = c.held;
      c.held = null;
      for (const l of held) if (!s.destroyed) s.write(l);
    }
  }

  private async streamItems(s: net.Socket, id: string | number | null, result: Streamed, stallMs: number | null): Promise<void> {
    const head = JSON.stringify({ id, ok: true, result: { ...result.extra, [result.field]: [] } });
    // Everything up to the empty array's closing bracket, then the items, then the rest.
    const at = head.lastIndexOf('[]') + 1;
    // Items are gathered into chunks of about 64 KiB: one write (one syscall) per item costs more than reading it.
    let chunk = head.slice(0, at);
    let first = true;
    for await (const item of result.items) {
      if (s.destroyed) return;
      chunk += (first ? '' : ',') + JSON.stringify(item);
      first = false;
      if (chunk.length < STREAM_CHUNK) continue;
      s.write(chunk);
      chunk = '';
      if (s.writableLength > PAUSE_BYTES) await drained(s, stallMs);
    }
    this.o.log.flush();
    if (!s.destroyed) s.write(chunk + head.slice(at) + '\n');
  }

  /**
   * An event to one subscriber. Serialized once for all of them (the same
   * object comes to each in turn), and a subscriber's lines of one loop turn
   * are written together at its end (or at EVENT_BATCH_CHARS): thousands of
   * tasks ending at once are thousands of events for each subscriber, and a
   * write each would hold the loop for as many system calls. A non-admin
   * subscriber that lets events pile up unread is dropped early, at
   * EVENTS_DROP_BYTES.
   */
  private publish(c: Conn, e: AgentEvent): void {
    const pending = c.s.writableLength + c.eventChars;
    if (c.peer.role !== 'admin' && pending > EVENTS_DROP_BYTES) {
      this.o.log.debug({ peerUid: c.peer.uid, pending }, 'events subscriber does not read; dropping the connection');
      c.s.destroy();
      return;
    }
    if (e !== this.lastEvent) {
      this.lastEvent = e;
      this.lastEventLine = line(e);
    }
    if (c.events === null) {
      c.events = [];
      this.eventsDue.add(c);
      this.eventFlush ??= setImmediate(() => this.flushAllEvents());
    }
    c.events.push(this.lastEventLine);
    c.eventChars += this.lastEventLine.length;
    if (c.eventChars >= EVENT_BATCH_CHARS) this.flushEvents(c);
  }

  private flushAllEvents(): void {
    this.eventFlush = null;
    for (const c of this.eventsDue) this.flushEvents(c);
  }

  /** Write a subscriber's waiting event lines, in one write. */
  private flushEvents(c: Conn): void {
    if (c.events === null) return;
    const text = c.events.join('');
    c.events = null;
    c.eventChars = 0;
    this.eventsDue.delete(c);
    this.send(c, text);
  }

  /** A reply or other line: after the events published before it, so the order on the wire is the order things happened. */
  private write(c: Conn, msg: unknown, text = line(msg)): void {
    this.flushEvents(c);
    this.send(c, text);
  }

  private send(c: Conn, text: string): void {
    const { s } = c;
    if (s.destroyed || !s.writable) return;
    // A streamed reply is one line written in pieces: nothing may land inside it.
    if (c.held) {
      c.held.push(text);
      if (c.held.length > HELD_MAX) {
        this.o.log.warn({ held: c.held.length }, 'client does not read its replies; dropping the connection');
        s.destroy();
      }
      return;
    }
    // The lines the request logged (its audit line) go out first: whoever holds the reply finds them in the log.
    this.o.log.flush();
    s.write(text);
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
    for (const l of this.listeners) l.close();
    this.listeners = [];
    const deadline = Date.now() + graceMs;
    let seen = -1;
    while (Date.now() < deadline && (this.inflight > 0 || seen !== this.counters.requests)) {
      seen = this.counters.requests;
      await new Promise((r) => setTimeout(r, 50));
    }
    if (this.eventFlush) clearImmediate(this.eventFlush);
    this.flushAllEvents();
    for (const s of this.conns) s.end();
    for (const s of this.conns) s.destroy();
    removeOwnSocket(this.o.socketPath, this.socketIno);
    removeOwnSocket(adminSocketPath(this.o.socketPath), this.adminSocketIno);
  }
}

/** Resolves when s can take more, or is gone; with stallMs, s is destroyed when it takes nothing for that long. */
function drained(s: net.Socket, stallMs: number | null = null): Promise<void> {
  return new Promise((resolve) => {
    const timer = stallMs === null ? null : setTimeout(() => s.destroy(), stallMs);
    const done = () => {
      if (timer) clearTimeout(timer);
      s.off('drain', done);
      s.off('close', done);
      resolve();
    };
    s.once('drain', done);
    s.once('close', done);
  });
}

function line(msg: unknown): string {
  return JSON.stringify(msg) + '\n';
}

export function errorBody(err: unknown): { code: ErrorCode; message: string } {
  if (err instanceof AgentError) return { code: err.code, message: err.message };
  return { code: 'EINTERNAL', message: (err as Error)?.message ?? String(err) };
}

/**
 * The socket file's mode. An explicit mode wins. With a group, 0660: the
 * group's members reach it. Without one, when non-root peers are configured,
 * 0666: every local user reaches it and SO_PEERCRED decides (a refused peer is
 * closed at once and holds nothing, so reaching the socket gains it nothing).
 * Root alone: 0600.
 */
export function socketModeFor(o: Pick<ServerOptions, 'socketMode' | 'socketGroup' | 'operatorUids' | 'allowUids' | 'readOnlyGids'>): number {
  if (o.socketMode !== undefined) return o.socketMode;
  if (o.socketGroup !== undefined) return 0o660;
  const others = o.allowUids.length > 0 || o.readOnlyGids.length > 0 || o.operatorUids.some((u) => u !== 0);
  return others ? 0o666 : 0o600;
}
