/**
 * metrics: a Prometheus exporter for the node's jobs and steps (prom-client).
 *
 * Serves /metrics over HTTP when `--metrics ADDR:PORT` is given. Values are read
 * from the cgroup tree at scrape time (through the StepTree and cgroupfs stats),
 * so they equal the kernel's files; nothing is cached between scrapes. Labels:
 * node, job, step (and task only with --metrics-tasks, for cardinality). Agent
 * gauges and request counters come from the server's hooks. Never writes to
 * the tree.
 */
import http from 'node:http';
import path from 'node:path';
import type { Logger } from 'pino';
import client from 'prom-client';
import { childDirs, enabledIn, readStats, type CgroupStats } from '../cgroupfs/index.js';
import { AgentError } from '../errors.js';
import { parseTaskName, USER_DIR, type StepTree } from '../steps/index.js';

export interface MetricsOptions {
  listen: string;
  node: string;
  perTask: boolean;
  tree: StepTree;
  log: Logger;
  agentGauges: () => { connections: number };
}

export interface RequestObserver {
  observe(op: string, seconds: number, errorCode?: string): void;
}

import { parseListen } from './listen.js';

export { parseListen };

/** The controllers a directory enables for its children; undefined (read every file) when it is gone or unreadable. */
function subtreeControllers(dir: string): string[] | undefined {
  try {
    return enabledIn(dir);
  } catch {
    return undefined;
  }
}

export class Metrics implements RequestObserver {
  readonly registry = new client.Registry();
  private server: http.Server | null = null;
  private readonly requests: client.Counter<'op'>;
  private readonly durations: client.Histogram<'op'>;
  private readonly errors: client.Counter<'code'>;
  lastScrapeMs = 0;

  constructor(private readonly o: MetricsOptions) {
    const reg = [this.registry];
    this.registry.setDefaultLabels({ node: o.node });
    client.collectDefaultMetrics({ register: this.registry, prefix: 'cgstep_agent_' });
    this.requests = new client.Counter({ name: 'cgstep_requests_total', help: 'Requests handled, by op', labelNames: ['op'], registers: reg });
    this.durations = new client.Histogram({ name: 'cgstep_request_duration_seconds', help: 'Request latency, by op', labelNames: ['op'], buckets: [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5], registers: reg });
    this.errors = new client.Counter({ name: 'cgstep_errors_total', help: 'Requests that failed, by error code', labelNames: ['code'], registers: reg });
    const self = this;
    new client.Gauge({ name: 'cgstep_jobs', help: 'Live jobs', registers: reg, collect() { this.set(o.tree.jobCount); } });
    new client.Gauge({ name: 'cgstep_steps', help: 'Live steps', registers: reg, collect() { this.set(o.tree.stepCount); } });
    new client.Gauge({ name: 'cgstep_connections', help: 'Open control connections', registers: reg, collect() { this.set(o.agentGauges().connections); } });
    // One collector walks the tree once per scrape and fills every level; the
    // registry serialises in registration order, so it must come before them.
    new client.Gauge({ name: 'cgstep_scrape_cgroups', help: 'cgroups read by the last scrape', registers: reg, collect() { this.set(self.collectTree()); } });
    const levels = o.perTask ? (['job', 'step', 'task'] as const) : (['job', 'step'] as const);
    for (const level of levels) {
      const labels = level === 'job' ? ['job'] : level === 'step' ? ['job', 'step'] : ['job', 'step', 'task'];
      const g = (name: string, help: string) => new client.Gauge({ name: `cgstep_${level}_${name}`, help: `${help}, per ${level}`, labelNames: labels, registers: reg });
      const set = {
        cpuUser: g('cpu_user_seconds_total', 'CPU user time (cpu.stat user_usec)'),
        cpuSystem: g('cpu_system_seconds_total', 'CPU system time (cpu.stat system_usec)'),
        memCurrent: g('memory_current_bytes', 'memory.current'),
        memPeak: g('memory_peak_bytes', 'memory.peak'),
        oom: g('oom_kills_total', 'OOM kills (memory.events oom_kill)'),
        pids: g('pids', 'pids.current'),
        ioRead: g('io_read_bytes_total', 'io.stat rbytes, all devices'),
        ioWrite: g('io_write_bytes_total', 'io.stat wbytes, all devices'),
      };
      this.levelGauges.set(level, set);
    }
  }

  private levelGauges = new Map<string, Record<string, client.Gauge<string>>>();

  private put(level: string, labels: Record<string, string>, st: CgroupStats): void {
    const g = this.levelGauges.get(level);
    if (!g) return;
    if (st.cpu) {
      g.cpuUser.set(labels, st.cpu.userUsec / 1e6);
      g.cpuSystem.set(labels, st.cpu.systemUsec / 1e6);
    }
    if (st.memory) {
      g.memCurrent.set(labels, st.memory.current);
      if (st.memory.peak !== null) g.memPeak.set(labels, st.memory.peak);
    }
    if (st.oomKill !== null) g.oom.set(labels, st.oomKill);
    if (st.pids) g.pids.set(labels, st.pids.current);
    if (st.io) {
      g.ioRead.set(labels, Object.values(st.io).reduce((a, d) => a + d.rbytes, 0));
      g.ioWrite.set(labels, Object.values(st.io).reduce((a, d) => a + d.wbytes, 0));
    }
  }

  /** Read every job/step (and task) directory once; gauges are reset so gone steps disappear. */
  private collectTree(): number {
    for (const g of this.levelGauges.values()) for (const m of Object.values(g)) m.reset();
    const scope = this.o.tree.paths.scope;
    let n = 0;
    // A directory has at most the controllers the scope enables (the tree passes them all
    // down): one read per scrape instead of a failed open per missing file. A level that
    // has fewer (half made by a crash) reads its missing files as "not available".
    const ctl = subtreeControllers(scope);
    // Jobs and steps from the agent's index (no directory listing per job); task leaves from user/.
    for (const [job, steps] of this.o.tree.known()) {
      const jdir = this.o.tree.paths.job(job);
      this.put('job', { job }, readStats(jdir, ctl));
      n++;
      for (const step of steps) {
        const sdir = this.o.tree.paths.step(job, step);
        this.put('step', { job, step }, readStats(sdir, ctl));
        n++;
        if (!this.o.perTask) continue;
        const udir = path.join(sdir, USER_DIR);
        for (const tn of childDirs(udir)) {
          const task = parseTaskName(tn);
          if (task === null) continue;
          this.put('task', { job, step, task: String(task) }, readStats(path.join(udir, tn), ctl));
          n++;
        }
      }
    }
    return n;
  }

  observe(op: string, seconds: number, errorCode?: string): void {
    this.requests.inc({ op });
    this.durations.observe({ op }, seconds);
    if (errorCode) this.errors.inc({ code: errorCode });
  }

  async render(): Promise<string> {
    const t0 = performance.now();
    const text = await this.registry.metrics();
    this.lastScrapeMs = performance.now() - t0;
    return text;
  }

  async listen(): Promise<{ host: string; port: number }> {
    const where = parseListen(this.o.listen);
    if ('path' in where) throw new AgentError('ENOTSUP', '--metrics unix: is not supported yet');
    const { host, port } = where;
    const server = http.createServer((req, res) => {
      if (req.method !== 'GET' || (req.url !== '/metrics' && req.url !== '/')) {
        res.writeHead(404).end('not found; try /metrics\n');
        return;
      }
      this.render().then(
        (text) => res.writeHead(200, { 'Content-Type': this.registry.contentType }).end(text),
        (err) => {
          this.o.log.error({ err }, 'metrics scrape failed');
          res.writeHead(500).end(`scrape failed: ${(err as Error).message}\n`);
        },
      );
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) => reject(new AgentError('EINVAL', `--metrics ${this.o.listen}: ${(err as Error).message}`)));
      server.listen(port, host, () => resolve());
    });
    this.server = server;
    const addr = server.address() as { address: string; port: number };
    this.o.log.info({ address: addr.address, port: addr.port }, 'metrics served at /metrics');
    return { host: addr.address, port: addr.port };
  }

  close(): Promise<void> {
    return new Promise((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}
