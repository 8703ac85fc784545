/**
 * metrics/agent: the agent's own series, rendered at scrape time: requests by
 * op and their latency, errors by code, gauges the exporter passes in (jobs,
 * steps, connections, the snapshot's figures), and the process (CPU, memory,
 * fds, start time, the longest event-loop delay since the last scrape). Kept in
 * plain numbers and written as a few dozen lines: observe() on every request is
 * a few array writes, and a scrape's share here is a fraction of a millisecond.
 */
import fs from 'node:fs';
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';

/** Upper bounds of the request latency histogram (seconds). */
const BUCKETS = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5];

interface OpFigures { count: number; sum: number; buckets: Float64Array }

export interface Gauge { name: string; help: string; value: number }

/** A label value as the text format wants it. */
export function escLabel(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

export class AgentSeries {
  private readonly ops = new Map<string, OpFigures>();
  private readonly errors = new Map<string, number>();
  private readonly loop: IntervalHistogram;
  private readonly startSec = Math.round(Date.now() / 1000 - process.uptime());
  private readonly maxFds = readMaxFds();

  /** constLabels: on every series, formatted (`node="n1"`). */
  constructor(private readonly constLabels: string) {
    this.loop = monitorEventLoopDelay({ resolution: 10 });
    this.loop.enable();
  }

  observe(op: string, seconds: number, errorCode?: string): void {
    let f = this.ops.get(op);
    if (!f) this.ops.set(op, (f = { count: 0, sum: 0, buckets: new Float64Array(BUCKETS.length) }));
    f.count++;
    f.sum += seconds;
    for (let i = 0; i < BUCKETS.length; i++) if (seconds <= BUCKETS[i]) f.buckets[i]++;
    if (errorCode) this.errors.set(errorCode, (this.errors.get(errorCode) ?? 0) + 1);
  }

  /** The text of every series here; the event-loop delay figures start again after each call. */
  render(gauges: Gauge[]): string {
    const L = this.constLabels;
    const lab = (extra: string) => (extra && L ? `{${extra},${L}}` : extra || L ? `{${extra}${L}}` : '');
    const out: string[] = [];
    const family = (name: string, type: string, help: string, lines: string[]) => out.push(`# HELP ${name} ${help}\n# TYPE ${name} ${type}\n${lines.join('')}`);
    const one = (name: string, type: string, help: string, value: number) => family(name, type, help, [`${name}${lab('')} ${value}\n`]);
    const ops = [...this.ops].sort((a, b) => (a[0] < b[0] ? -1 : 1));
    family('cgstep_requests_total', 'counter', 'Requests handled, by op', ops.map(([op, f]) => `cgstep_requests_total${lab(`op="${escLabel(op)}"`)} ${f.count}\n`));
    const hist: string[] = [];
    for (const [op, f] of ops) {
      const o = `op="${escLabel(op)}"`;
      // le first, as prom-client wrote it: some parsers group a histogram's buckets by the labels before le.
      for (let i = 0; i < BUCKETS.length; i++) hist.push(`cgstep_request_duration_seconds_bucket${lab(`le="${BUCKETS[i]}",${o}`)} ${f.buckets[i]}\n`);
      hist.push(`cgstep_request_duration_seconds_bucket${lab(`le="+Inf",${o}`)} ${f.count}\n`);
      hist.push(`cgstep_request_duration_seconds_sum${lab(o)} ${f.sum}\n`, `cgstep_request_duration_seconds_count${lab(o)} ${f.count}\n`);
    }
    family('cgstep_request_duration_seconds', 'histogram', 'Request latency, by op', hist);
    const errs = [...this.errors].sort((a, b) => (a[0] < b[0] ? -1 : 1));
    family('cgstep_errors_total', 'counter', 'Requests that failed, by error code', errs.map(([code, n]) => `cgstep_errors_total${lab(`code="${escLabel(code)}"`)} ${n}\n`));
    for (const g of gauges) one(g.name, 'gauge', g.help, g.value);
    const cpu = process.cpuUsage();
    const mem = process.memoryUsage();
    one('cgstep_agent_process_cpu_user_seconds_total', 'counter', 'User CPU time of the agent', cpu.user / 1e6);
    one('cgstep_agent_process_cpu_system_seconds_total', 'counter', 'System CPU time of the agent', cpu.system / 1e6);
    one('cgstep_agent_process_cpu_seconds_total', 'counter', 'CPU time of the agent, user and system', (cpu.user + cpu.system) / 1e6);
    one('cgstep_agent_process_start_time_seconds', 'gauge', 'When the agent started (Unix time)', this.startSec);
    one('cgstep_agent_process_resident_memory_bytes', 'gauge', 'Resident memory of the agent', mem.rss);
    one('cgstep_agent_nodejs_heap_size_used_bytes', 'gauge', 'V8 heap in use', mem.heapUsed);
    one('cgstep_agent_nodejs_heap_size_total_bytes', 'gauge', 'V8 heap size', mem.heapTotal);
    one('cgstep_agent_nodejs_external_memory_bytes', 'gauge', 'Memory outside the V8 heap held by its objects (buffers)', mem.external);
    const fds = openFds();
    if (fds !== null) one('cgstep_agent_process_open_fds', 'gauge', 'Open file descriptors of the agent', fds);
    if (this.maxFds !== null) one('cgstep_agent_process_max_fds', 'gauge', 'Open file descriptor limit of the agent', this.maxFds);
    one('cgstep_agent_nodejs_eventloop_lag_max_seconds', 'gauge', 'Longest event-loop delay since the last scrape (10 ms resolution)', this.loop.count ? this.loop.max / 1e9 : 0);
    one('cgstep_agent_nodejs_eventloop_lag_p99_seconds', 'gauge', '99th percentile event-loop delay since the last scrape', this.loop.count ? this.loop.percentile(99) / 1e9 : 0);
    this.loop.reset();
    return out.join('');
  }

  close(): void {
    this.loop.disable();
  }
}

function openFds(): number | null {
  try {
    return fs.readdirSync('/proc/self/fd').length - 1; // less the directory's own fd
  } catch {
    return null;
  }
}

function readMaxFds(): number | null {
  try {
    const m = /^Max open files\s+(\d+)/m.exec(fs.readFileSync('/proc/self/limits', 'utf8'));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}
