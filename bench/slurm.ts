/**
 * bench/slurm: what the cgstep SPANK plugin costs a Slurm step. Runs a
 * one-machine Slurm (test/harness/slurm.ts) and a real cgstepd, then times
 * `srun -n1 true` and `srun -n8 -O true` (allocation, step launch, tasks,
 * teardown, as a user sees it) with plugstack.conf empty and with the plugin, interleaved so that drift hits both alike. Not a test: nothing is
 * asserted.
 *
 *   node --import tsx bench/slurm.ts            (BENCH_SLURM_N=40 runs per mode)
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { slurmSupport, startSlurm, type SlurmCluster } from '../test/harness/slurm.js';
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
let cluster: SlurmCluster | null = null;
let agent: BenchAgent | null = null;
try {
  cluster = await startSlurm({ name: 'bench', socket, plugin: false });
  agent = await startAgent(root, ['--node-name', 'node1', '--gres', cluster.gresConf, '--ignore-missing-controllers'], socketDir);
  const c = await CgstepClient.connect(socket);
  const status = (await c.request('status', {})) as { devices: { supported: boolean; reason?: string } };
  c.close();
  const pluginArgs = status.devices.supported ? [] : ['devices=try'];
  const modes: Record<string, string[] | null> = { 'no plugin': null, [`plugin${pluginArgs.length ? ' (devices=try: ' + status.devices.reason + ')' : ''}`]: pluginArgs };
  const names = Object.keys(modes);
  // Warm-up: the first steps after start-up are slower (caches, slurmd's first launch).
  for (const n of names) {
    cluster.setPluginArgs(modes[n]);
    for (let i = 0; i < 3; i++) await cluster.srun(['-n1', 'true']);
  }
  // One task, and eight on the node's four CPUs (-O: overcommit), so that the per-task cost shows.
  for (const args of [['-n1'], ['-n8', '-O']]) {
    const what = `srun ${args.join(' ')} true`;
    const times: Record<string, number[]> = Object.fromEntries(names.map((n) => [n, []]));
    for (let i = 0; i < N; i++) {
      for (const n of i % 2 ? [...names].reverse() : names) {
        cluster.setPluginArgs(modes[n]);
        const r = await cluster.srun([...args, 'true']);
        if (r.code !== 0) throw new Error(`${what} failed (${n}): ${r.stderr}`);
        times[n].push(r.ms);
      }
    }
    console.log(`${what}, ${N} runs per mode, interleaved — ${os.cpus().length} x ${os.cpus()[0]?.model ?? 'cpu'}, Slurm 22.05 on loopback`);
    const med: Record<string, number> = {};
    for (const n of names) {
      const s = summarize(times[n]);
      med[n] = s.median;
      console.log(`  ${n.padEnd(12)} median ${ms(s.median)}  p99 ${ms(s.p99)}  mean ${ms(s.mean)}`);
    }
    console.log(`  plugin - no plugin: ${ms(med[names[1]] - med[names[0]])} at the median`);
  }
  // Context: what one cgroup.procs write costs the kernel after the system was
  // quiet for a while (the plugin's task attach is one such write).
  const move = await coldMoves(root, 12);
  console.log(`  kernel floor: one cgroup.procs write after 200 ms idle, median ${ms(summarize(move).median)} (no cgroup2 favordynmods: an RCU grace period)`);
} finally {
  await cluster?.stop();
  await agent?.stop();
  await removeRoot(root);
  fs.rmSync(socketDir, { recursive: true, force: true });
}
