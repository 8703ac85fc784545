/**
 * bench/scale and throughput: concurrent clients cycling steps, and the agent
 * with 0, 1,000 and 10,000 live steps (RSS, cycle latency, restart to ready).
 */
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { CgstepClient } from '../src/rpc/client.js';
import { agentCycle } from './cycle.js';
import { benchRoot, freePort, removeRoot, rssMiB, sleeper, startAgent, summarize, waitReady, type Summary } from './lib.js';
import { StallProbe } from './stallprobe.js';

/**
 * One scrape's wall time; the body is taken as bytes (decoding it here would
 * hold the probe's loop). `gzip`: asked for as Prometheus asks (Accept-Encoding:
 * gzip), the body kept compressed. A new connection each time: a kept-alive one
 * that the agent closes after 5 s idle can be reused by the client at that
 * moment (a busy machine makes reading the body that slow) and the scrape fails
 * with "other side closed".
 */
async function scrapeOnce(port: number, gzip: boolean): Promise<{ ms: number; body: ArrayBuffer }> {
  const t0 = performance.now();
  const chunks = await new Promise<Buffer[]>((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: '/metrics', agent: false, headers: gzip ? { 'Accept-Encoding': 'gzip' } : {} }, (res) => {
        const got: Buffer[] = [];
        res.on('data', (c: Buffer) => got.push(c));
        res.on('end', () => (res.statusCode === 200 ? resolve(got) : reject(new Error(`/metrics answered ${res.statusCode}`))));
        res.on('error', reject);
      })
      .on('error', reject);
  });
  const body = Buffer.concat(chunks);
  return { ms: performance.now() - t0, body: body.buffer.slice(body.byteOffset, body.byteOffset + body.byteLength) };
}

export interface ScrapeFigures {
  /** Median of scrapes served from the kept snapshot, asking for gzip as Prometheus does. */
  median: number;
  /** The same scrapes without gzip (the plain text). */
  plainMedian: number;
  /** Body bytes with gzip, and of the text. */
  bytes: number;
  textBytes: number;
  series: number;
  /** The agent's longest event-loop stall (slowest `hello`, asked from a process of its own: bench/stallprobe.ts) during those scrapes. */
  stallMs: number;
  /** The first scrape, which waits for a refresh (a walk of the whole tree in slices). */
  refreshScrapeMs: number;
  /** The agent's longest stall during that refresh, seen from outside and as the agent reports its longest slice. */
  refreshStallMs: number;
  refreshLongestSliceMs: number;
}

/** The first scrape (a refresh, no snapshot yet), then `times` scrapes from the snapshot with gzip and `times` without, with the agent's stall. */
async function scrape(port: number, socket: string, times: number): Promise<ScrapeFigures> {
  const probe = await StallProbe.start(socket);
  const lat: number[] = [];
  const plainLat: number[] = [];
  let first: Awaited<ReturnType<typeof probe.during<{ ms: number; body: ArrayBuffer }>>>;
  let kept: Awaited<ReturnType<typeof probe.during<void>>>;
  let body: ArrayBuffer;
  let plain: ArrayBuffer;
  try {
    first = await probe.during(() => scrapeOnce(port, true));
    body = plain = first.result.body;
    kept = await probe.during(async () => {
      for (let i = 0; i < times; i++) {
        const r = await scrapeOnce(port, true);
        lat.push(r.ms);
        body = r.body;
        const p = await scrapeOnce(port, false);
        plainLat.push(p.ms);
        plain = p.body;
      }
    });
  } finally {
    probe.close();
  }
  const text = zlib.gunzipSync(Buffer.from(body)).toString();
  const slice = /^cgstep_metrics_refresh_longest_slice_seconds\{[^}]*\} (\S+)$/m.exec(text);
  return {
    median: summarize(lat).median,
    plainMedian: summarize(plainLat).median,
    bytes: body.byteLength,
    textBytes: plain.byteLength,
    series: text.split('\n').filter((l) => l && !l.startsWith('#')).length,
    stallMs: kept.maxStallMs,
    refreshScrapeMs: first.result.ms,
    refreshStallMs: first.maxStallMs,
    refreshLongestSliceMs: slice ? Number(slice[1]) * 1000 : NaN,
  };
}

export interface ThroughputRow {
  clients: number;
  cyclesPerSec: number;
  /** Over every cycle of the run. */
  p99: number;
  median: number;
  max: number;
  /** Over the cycles begun after the first second (the clients' connects and first requests, all at once, left out). */
  p99AfterFirstSecond: number;
}

/**
 * n clients, each on its own connection, creating and destroying steps
 * (step.create, destroy) for ms: every cycle's latency, and those of the
 * cycles begun after the first second. Job ids from jobBase, 100,000 a client.
 */
export async function clientsCycling(socket: string, n: number, ms: number, jobBase: number): Promise<{ lat: number[]; later: number[] }> {
  const lat: number[] = [];
  const later: number[] = [];
  const start = performance.now();
  const end = start + ms;
  await Promise.all(
    Array.from({ length: n }, async (_, k) => {
      const c = await CgstepClient.connect(socket);
      for (let i = 0; performance.now() < end; i++) {
        const job = jobBase + k * 100_000 + i; // below Slurm's largest job id (4294967280)
        const t0 = performance.now();
        await c.request('step.create', { job, step: 0 });
        await c.request('destroy', { job });
        const took = performance.now() - t0;
        lat.push(took);
        if (t0 - start >= 1000) later.push(took);
      }
      c.close();
    }),
  );
  return { lat, later };
}

export async function throughputSection(clientsList: number[], seconds: number): Promise<ThroughputRow[]> {
  const rows: ThroughputRow[] = [];
  const root = benchRoot('tput');
  const p = sleeper();
  let agent: Awaited<ReturnType<typeof startAgent>> | null = null;
  try {
    agent = await startAgent(root, ['--node-name', 'tput', '--max-connections', '4096']);
    const socket = agent.socket;
    const scope = path.join(root, 'system.slice', 'tput_slurmstepd.scope');
    const park = path.join(root, 'park');
    fs.mkdirSync(park);
    for (const n of clientsList) {
      const { lat, later } = await clientsCycling(socket, n, seconds * 1000, 1 + n * 10_000_000);
      const sum = summarize(lat);
      rows.push({ clients: n, cyclesPerSec: lat.length / seconds, p99: sum.p99, median: sum.median, max: lat.reduce((a, b) => Math.max(a, b), 0), p99AfterFirstSecond: summarize(later).p99 });
    }
    void scope;
  } finally {
    await agent?.stop();
    p.kill('SIGKILL');
    await removeRoot(root);
  }
  return rows;
}

export interface ScaleRow { steps: number; rssMiB: number; cycle: Summary; restartReadyMs: number; restartListMs: number; scrape: ScrapeFigures }

export async function scaleSection(levels: number[], cycles: number): Promise<ScaleRow[]> {
  const rows: ScaleRow[] = [];
  const root = benchRoot('scale');
  const p = sleeper();
  const sockDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-bench-scale-'));
  const base = ['--node-name', 'scale'];
  /** Start the agent (the socket in sockDir) and time it to its first answer and to a full list. */
  const start = async (args: string[]) => {
    const t0 = performance.now();
    const a = await startAgent(root, args, sockDir);
    const ready = performance.now() - t0;
    await waitReady(a.socket, a.proc, 'list');
    const listed = performance.now() - t0;
    return { ...a, ready, listed };
  };
  let agent: Awaited<ReturnType<typeof start>> | null = null;
  let withMetrics: Awaited<ReturnType<typeof start>> | null = null;
  try {
    // RSS and the cycle are measured without --metrics (the exporter is loaded only with it);
    // the restart is timed with --metrics on, and /metrics scraped from that agent.
    agent = await start(base);
    const scope = path.join(root, 'system.slice', 'scale_slurmstepd.scope');
    const park = path.join(root, 'park');
    fs.mkdirSync(park);
    let live = 0;
    for (const target of levels) {
      const c = await CgstepClient.connect(agent.socket);
      // Fill with live steps (job, step, slurm/ and user/ each; no process in them).
      const batch: Promise<unknown>[] = [];
      for (; live < target; live++) {
        batch.push(c.request('step.create', { job: 2_000_000 + live, step: 0 }));
        if (batch.length >= 64) await Promise.all(batch.splice(0));
      }
      await Promise.all(batch);
      const cyc = await agentCycle(c, scope, park, p.pid!, cycles);
      c.close();
      const rss = rssMiB(agent.proc.pid!);
      await agent.stop();
      agent = null;
      const port = await freePort();
      withMetrics = await start([...base, '--metrics', `127.0.0.1:${port}`]);
      const scraped = await scrape(port, withMetrics.socket, 5);
      const { ready, listed } = withMetrics;
      await withMetrics.stop();
      withMetrics = null;
      rows.push({ steps: target, rssMiB: rss, cycle: summarize(cyc), restartReadyMs: ready, restartListMs: listed, scrape: scraped });
      agent = await start(base);
    }
  } finally {
    await agent?.stop();
    await withMetrics?.stop();
    p.kill('SIGKILL');
    fs.rmSync(sockDir, { recursive: true, force: true });
    await removeRoot(root);
  }
  return rows;
}
