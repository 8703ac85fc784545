/**
 * metrics: a Prometheus exporter for the node's jobs and steps.
 *
 * Serves /metrics over HTTP (TCP, or a Unix socket with `--metrics unix:PATH`).
 * The per-job/step/task series come from a snapshot (snapshot.ts): the tree read
 * and the text rendered in slices, kept at most `maxAgeSec` old. A scrape never
 * walks the tree nor renders those series on the event loop: it writes the kept
 * chunks after the few dozen lines of the agent's own series (agent.ts), and many
 * scrapers cost one walk. A scraper that takes gzip (Prometheus does) gets the
 * snapshot compressed once and those lines after it (gzip.ts). Labels: node,
 * jobid, step (and task only with --metrics-tasks, for cardinality).
 * Hardening: bounded concurrent connections, short header and request
 * timeouts, and an optional bearer token. Never writes to the tree.
 */
import crypto from 'node:crypto';
import http from 'node:http';
import type { Logger } from 'pino';
import { AgentError } from '../errors.js';
import type { StepTree } from '../steps/index.js';
import { AgentSeries, escLabel, type Gauge } from './agent.js';
import { acceptsGzip, gzipPrefix, gzipWith, type GzipPrefix } from './gzip.js';
import { parseListen } from './listen.js';
import { prepareSocketDir, removeOwnSocket, removeStaleSocket, settleSocket } from '../sys/privdir.js';
import { takeSnapshot, type Snapshot } from './snapshot.js';

export { parseListen };

export interface MetricsOptions {
  listen: string;
  node: string;
  perTask: boolean;
  tree: StepTree;
  log: Logger;
  agentGauges: () => { connections: number };
  /** A scrape is served from a snapshot at most this old (seconds). */
  maxAgeSec: number;
  /** Concurrent HTTP connections; more are refused. */
  maxConnections: number;
  /** When set, a scrape must send `Authorization: Bearer <token>`. */
  token?: string;
  /** Group of a Unix metrics socket (mode 0660); root only (0600) when absent. */
  socketGroup?: number;
  /** The job's owner uid; absent: no owner series. */
  ownerOf?: (job: string) => number | null;
}

export interface RequestObserver {
  observe(op: string, seconds: number, errorCode?: string): void;
}

/** How long after the last scrape the snapshot keeps being refreshed in the background. */
const KEEP_WARM_MS = 5 * 60_000;

const CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

export class Metrics implements RequestObserver {
  private server: http.Server | null = null;
  private readonly agent: AgentSeries;
  private snapshot: Snapshot | null = null;
  private refreshing: Promise<Snapshot> | null = null;
  private lastScrape = 0;
  private warmTimer: NodeJS.Timeout | null = null;
  private socketPath: string | null = null;
  /** The socket file made at listen: only that file is removed at close. */
  private socketIno = -1;
  /** Each snapshot's text compressed for gzip scrapes, once. */
  private readonly gzipped = new WeakMap<Snapshot, Promise<GzipPrefix>>();
  /** When a scrape last asked for gzip: while recent, a refresh compresses before it serves. */
  private lastGzipScrape = 0;
  private readonly constLabels: string;
  lastScrapeMs = 0;

  constructor(private readonly o: MetricsOptions) {
    this.constLabels = `node="${escLabel(o.node)}"`;
    this.agent = new AgentSeries(this.constLabels);
  }

  observe(op: string, seconds: number, errorCode?: string): void {
    this.agent.observe(op, seconds, errorCode);
  }

  /** The agent's series, with the gauges of the tree and of the snapshot s. */
  private head(s: Snapshot): Buffer {
    const { tree } = this.o;
    const gauges: Gauge[] = [
      { name: 'cgstep_jobs', help: 'Live jobs', value: tree.jobCount },
      { name: 'cgstep_steps', help: 'Live steps', value: tree.stepCount },
      { name: 'cgstep_connections', help: 'Open control connections', value: this.o.agentGauges().connections },
      { name: 'cgstep_scrape_cgroups', help: 'cgroups read by the last snapshot', value: s.cgroups },
      { name: 'cgstep_metrics_snapshot_age_seconds', help: 'Age of the snapshot this scrape is served from', value: (performance.now() - s.takenAt) / 1000 },
      { name: 'cgstep_metrics_refresh_duration_seconds', help: 'Wall time of the last snapshot refresh', value: s.refreshMs / 1000 },
      { name: 'cgstep_metrics_refresh_longest_slice_seconds', help: 'Longest the last refresh held the event loop at once', value: s.longestSliceMs / 1000 },
    ];
    return Buffer.from(this.agent.render(gauges));
  }

  /** A fresh snapshot, one refresh at a time however many scrapes ask. */
  refresh(): Promise<Snapshot> {
    this.refreshing ??= this.takeFresh().then(
      (s) => {
        this.snapshot = s;
        this.refreshing = null;
        return s;
      },
      (err) => {
        this.refreshing = null;
        throw err;
      },
    );
    return this.refreshing;
  }

  private async takeFresh(): Promise<Snapshot> {
    const s = await takeSnapshot({ tree: this.o.tree, perTask: this.o.perTask, constLabels: this.constLabels, ownerOf: this.o.ownerOf });
    // Gzip scrapers about: compressed before it is served, so that no scrape waits for it.
    if (Date.now() - this.lastGzipScrape < KEEP_WARM_MS) await this.gzipOf(s);
    return s;
  }

  private gzipOf(s: Snapshot): Promise<GzipPrefix> {
    let p = this.gzipped.get(s);
    if (!p) this.gzipped.set(s, (p = gzipPrefix(s.chunks)));
    return p;
  }

  /** The snapshot to serve: the kept one while it is young enough (refreshed behind it at half its age), else a new one. */
  private async current(): Promise<Snapshot> {
    const maxMs = this.o.maxAgeSec * 1000;
    const s = this.snapshot;
    const age = s ? performance.now() - s.takenAt : Infinity;
    if (age > maxMs) return this.refresh();
    if (age > maxMs / 2) void this.refresh().catch((err) => this.o.log.error({ err }, 'metrics snapshot refresh failed'));
    return s!;
  }

  /** Keep the snapshot warm while someone scrapes, so a scrape finds one that is young enough. */
  private keepWarm(): void {
    this.lastScrape = Date.now();
    if (this.warmTimer) return;
    this.warmTimer = setInterval(() => {
      if (Date.now() - this.lastScrape > KEEP_WARM_MS) {
        clearInterval(this.warmTimer!);
        this.warmTimer = null;
        return;
      }
      void this.refresh().catch((err) => this.o.log.error({ err }, 'metrics snapshot refresh failed'));
    }, Math.max(500, (this.o.maxAgeSec * 1000) / 2));
    this.warmTimer.unref();
  }

  /** The whole exposition text (tests and tools; a scrape streams the same). */
  async render(): Promise<string> {
    const t0 = performance.now();
    const s = await this.current();
    const text = Buffer.concat([this.head(s), ...s.chunks]).toString();
    this.lastScrapeMs = performance.now() - t0;
    return text;
  }

  private authorized(req: http.IncomingMessage): boolean {
    if (!this.o.token) return true;
    const got = Buffer.from(String(req.headers.authorization ?? ''));
    const want = Buffer.from(`Bearer ${this.o.token}`);
    return got.length === want.length && crypto.timingSafeEqual(got, want);
  }

  private async serve(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if (req.method !== 'GET' || (req.url !== '/metrics' && req.url !== '/')) {
      res.writeHead(404).end('not found; try /metrics\n');
      return;
    }
    if (!this.authorized(req)) {
      res.writeHead(401, { 'WWW-Authenticate': 'Bearer realm="cgstepd"' }).end('a bearer token is required (see --metrics-token-file)\n');
      return;
    }
    this.keepWarm();
    const t0 = performance.now();
    const s = await this.current();
    let body: Buffer[];
    const headers: http.OutgoingHttpHeaders = { 'Content-Type': CONTENT_TYPE, Vary: 'Accept-Encoding' };
    if (acceptsGzip(req.headers['accept-encoding'])) {
      this.lastGzipScrape = Date.now();
      // The agent's own series last here: they are compressed per scrape, after the kept text.
      body = gzipWith(await this.gzipOf(s), this.head(s));
      headers['Content-Encoding'] = 'gzip';
    } else body = [this.head(s), ...s.chunks];
    headers['Content-Length'] = body.reduce((n, b) => n + b.length, 0);
    res.writeHead(200, headers);
    // Corked: the kept chunks go out in as few writev calls as the socket takes.
    res.cork();
    for (const c of body) res.write(c);
    res.uncork();
    res.end();
    this.lastScrapeMs = performance.now() - t0;
  }

  async listen(): Promise<{ host: string; port: number } | { path: string }> {
    const where = parseListen(this.o.listen);
    const server = http.createServer((req, res) => {
      this.serve(req, res).catch((err) => {
        this.o.log.error({ err }, 'metrics scrape failed');
        if (!res.headersSent) res.writeHead(500).end(`scrape failed: ${(err as Error).message}\n`);
        else res.destroy();
      });
    });
    // Bounded: a local user cannot hold the agent's fds or memory with idle or slow connections.
    server.maxConnections = this.o.maxConnections;
    server.headersTimeout = 5000;
    server.requestTimeout = 10000;
    server.keepAliveTimeout = 5000;
    server.on('clientError', (_err, socket) => socket.destroy());
    server.on('connection', (s) => s.on('error', () => s.destroy()));
    if ('path' in where) {
      prepareSocketDir(where.path, 'metrics socket directory');
      await removeStaleSocket(where.path);
    }
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) => reject(new AgentError('EINVAL', `--metrics ${this.o.listen}: ${(err as Error).message}`)));
      if ('path' in where) {
        // Created with no window of a wider mode; opened to a group only when one is named.
        const old = process.umask(0o177);
        server.listen(where.path, () => resolve());
        process.umask(old);
      } else server.listen(where.port, where.host, () => resolve());
    });
    this.server = server;
    if ('path' in where) {
      this.socketPath = where.path;
      this.socketIno = settleSocket(where.path, this.o.socketGroup, this.o.socketGroup !== undefined ? 0o660 : undefined);
      this.o.log.info({ path: where.path, group: this.o.socketGroup ?? null, token: !!this.o.token, maxAgeSec: this.o.maxAgeSec }, 'metrics served at /metrics');
      return { path: where.path };
    }
    const addr = server.address() as { address: string; port: number };
    this.o.log.info({ address: addr.address, port: addr.port, token: !!this.o.token, maxAgeSec: this.o.maxAgeSec }, 'metrics served at /metrics');
    return { host: addr.address, port: addr.port };
  }

  close(): Promise<void> {
    if (this.warmTimer) clearInterval(this.warmTimer);
    this.agent.close();
    return new Promise((resolve) => {
      if (!this.server) return resolve();
      this.server.close(() => resolve());
      this.server.closeAllConnections();
      if (this.socketPath) removeOwnSocket(this.socketPath, this.socketIno);
    });
  }
}
