/**
 * bench/slurm: what the cgstep SPANK plugin costs a Slurm step. Runs a
 * one-machine Slurm (test/harness/slurm.ts) and a real cgstepd, then times
 * `srun -n1 true` and `srun -n8 -O true` (allocation, step launch, tasks,
 * teardown, as a user sees it) on a cluster without the plugin and one with
 * it (and, with BENCH_SLURM_BASELINE=<git rev>, one with the plugin as it was
 * at that revision), interleaved so that drift hits all alike. Not a test:
 * nothing is asserted.
 *
 *   node --import tsx bench/slurm.ts            (BENCH_SLURM_N=40 runs per mode)
 *   BENCH_SLURM_BASELINE=<rev> node --import tsx bench/slurm.ts
 */
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { REPO, slurmSupport, startSlurm, type SlurmCluster } from '../test/harness/slurm.js';
import { CgstepClient } from '../src/rpc/client.js';
import { benchRoot, ms, removeRoot, startAgent, summarize, type BenchAgent } from './lib.js';

const N = Number(process.env.BENCH_SLURM_N ?? 40);

/** Move a sleeping child into a fresh cgroup under root, n times, 200 ms apart; ms per write. */
async function coldMoves(parent: string, n: number): Promise<number[]> {
  const dir = path.join(parent, 'cold-moves');
  fs.mkdirSync(dir);
  const child = spawn('sleep', ['60'], { stdio: 'ignore' });
  const out: number[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const d = path.join(dir, `c${i}`);
      fs.mkdirSync(d);
      await new Promise((r) => setTimeout(r, 200));
      const t0 = performance.now();
      fs.writeFileSync(path.join(d, 'cgroup.procs'), String(child.pid));
      out.push(performance.now() - t0);
    }
  } finally {
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
  }
  return out;
}

const support = slurmSupport();
if (!support.ok) {
  console.error(`*** Slurm unavailable, not benchmarking: ${support.reason} ***`);
  process.exit(0);
}

const root = benchRoot('slurm');
const socketDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-bench-slurm-'));
const socket = path.join(socketDir, 's.sock');
const baselineRev = process.env.BENCH_SLURM_BASELINE;
const clusters: SlurmCluster[] = [];
let agent: BenchAgent | null = null;
let baselineSrc: string | null = null;

/** native/spank as it is at git revision rev, in a temp dir (for a before/after in one run). */
function pluginSourceAt(rev: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-bench-spank-src-'));
  const r = spawnSync('sh', ['-c', `git -C "$1" archive "$2" native/spank | tar -x -C "$3" --strip-components=2`, 'sh', REPO, rev, dir], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`git archive ${rev} native/spank: ${r.stderr}`);
  return dir;
}

try {
  // One cluster per mode, all up at once and used in turn: slurmd decides at
  // start-up whether a plugin has a prolog or epilog to run, so a mode cannot
  // be switched by rewriting plugstack.conf alone.
  const base = await startSlurm({ name: 'bench-none', socket, plugin: false });
  clusters.push(base);
  agent = await startAgent(root, ['--node-name', 'node1', '--gres', base.gresConf, '--ignore-missing-controllers'], socketDir);
  const c = await CgstepClient.connect(socket);
  const status = (await c.request('status', {})) as { devices: { supported: boolean; reason?: string } };
  c.close();
  const pluginArgs = status.devices.supported ? [] : ['devices=try'];
  const tag = pluginArgs.length ? ` (devices=try: ${status.devices.reason})` : '';
  const modes: Record<string, SlurmCluster> = { 'no plugin': base };
  if (baselineRev) {
    baselineSrc = pluginSourceAt(baselineRev);
    modes[`plugin@${baselineRev}`] = await startSlurm({ name: 'bench-before', socket, pluginArgs, pluginSrc: baselineSrc });
    clusters.push(modes[`plugin@${baselineRev}`]);
  }
  modes[`plugin${tag}`] = await startSlurm({ name: 'bench-plugin', socket, pluginArgs });
  clusters.push(modes[`plugin${tag}`]);
  const names = Object.keys(modes);
  // Warm-up: the first steps after start-up are slower (caches, slurmd's first launch).
  for (const n of names) for (let i = 0; i < 3; i++) await modes[n].srun(['-n1', 'true']);
  // One task, and eight on the node's four CPUs (-O: overcommit), so that the per-task cost shows.
  for (const args of [['-n1'], ['-n8', '-O']]) {
    const what = `srun ${args.join(' ')} true`;
    const times: Record<string, number[]> = Object.fromEntries(names.map((n) => [n, []]));
    for (let i = 0; i < N; i++) {
      for (const n of i % 2 ? [...names].reverse() : names) {
        const r = await modes[n].srun([...args, 'true']);
        if (r.code !== 0) throw new Error(`${what} failed (${n}): ${r.stderr}`);
        times[n].push(r.ms);
      }
    }
    console.log(`${what}, ${N} runs per mode, interleaved — ${os.cpus().length} x ${os.cpus()[0]?.model ?? 'cpu'}, Slurm 22.05 on loopback`);
    const med: Record<string, number> = {};
    for (const n of names) {
      const st = summarize(times[n]);
      med[n] = st.median;
      console.log(`  ${n.padEnd(24)} median ${ms(st.median)}  p99 ${ms(st.p99)}  mean ${ms(st.mean)}  (${ms(st.median - med[names[0]])} over no plugin)`);
    }
  }
  // Context: what one cgroup.procs write costs the kernel after the system was
  // quiet for a while (the plugin's task attach is one such write).
  const move = await coldMoves(root, 12);
  console.log(`  kernel floor: one cgroup.procs write after 200 ms idle, median ${ms(summarize(move).median)} (no cgroup2 favordynmods: an RCU grace period)`);
} finally {
  for (const cl of clusters) await cl.stop();
  await agent?.stop();
  await removeRoot(root);
  fs.rmSync(socketDir, { recursive: true, force: true });
  if (baselineSrc) fs.rmSync(baselineSrc, { recursive: true, force: true });
}
