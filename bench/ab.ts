/**
 * bench/ab: two agents side by side over the place cycle (with the device
 * program of bench/cycle), in alternating blocks of 50, and the floor after
 * them: for telling whether a change to the agent gains anything on a shared
 * machine. Not part of `npm run bench`:
 *
 *   node --import tsx bench/ab.ts [cycles] [A's extra cgstepd args] [B's]
 *   AB_A=/path/to/other/checkout node --import tsx bench/ab.ts 1000   # A runs that checkout's dist/
 *   AB_LOG=null ...   # the agents' logs to /dev/null (default: a socket this process reads, as journald does)
 *   AB_CLIENTS=64 ... # instead: that many clients creating and destroying steps (bench/scale's throughput),
 *                     # 3 s blocks, 8 rounds (the first left out): each agent's cycles/s and p99
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CgstepClient } from '../src/rpc/client.js';
import { buildRuleSet, compile } from '../src/devices/index.js';
import { CYCLE_DEVICES, agentCycle, buildFloor, floorCycle } from './cycle.js';
import { REPO, AGENT_NODE_FLAGS, benchRoot, removeRoot, sleeper, summarize, waitReady } from './lib.js';
import { clientsCycling } from './scale.js';

const cycles = Number(process.argv[2] ?? 1000);
const extra = [process.argv[3] ?? '', process.argv[4] ?? ''].map((s) => s.split(' ').filter(Boolean));
const repos = [process.env.AB_A ?? REPO, process.env.AB_B ?? REPO];
const root = benchRoot('ab');
const out = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-ab-'));
const p = sleeper();
const floorBin = buildFloor();
const progFile = path.join(out, 'prog.bin');
fs.writeFileSync(progFile, compile(buildRuleSet(CYCLE_DEVICES)).insns);
const procs = [0, 1].map((i) =>
  spawn(process.execPath, [...AGENT_NODE_FLAGS, path.join(repos[i], 'dist/bin/cgstepd.js'), '--ignore-systemd', '--cgroup-root', root, '--socket', path.join(out, `${i}.sock`), '--node-name', `ab${i}`, ...extra[i]], { stdio: ['ignore', process.env.AB_LOG === 'null' ? 'ignore' : 'pipe', 'ignore'] }),
);
// Each agent's log goes to a pipe this process reads, as journald reads a service's stdout.
for (const proc of procs) proc.stdout?.resume();
try {
  for (const [i, proc] of procs.entries()) await waitReady(path.join(out, `${i}.sock`), proc);
  const park = path.join(root, 'park');
  fs.mkdirSync(park);
  fs.writeFileSync(path.join(park, 'cgroup.procs'), String(p.pid));
  const scopes = [0, 1].map((i) => path.join(root, 'system.slice', `ab${i}_slurmstepd.scope`));
  const clients = await Promise.all([0, 1].map((i) => CgstepClient.connect(path.join(out, `${i}.sock`))));
  if (process.env.AB_CLIENTS) {
    for (const c of clients) c.close();
    await throughputAB(Number(process.env.AB_CLIENTS));
  } else await placeAB(clients, scopes, park);
} finally {
  for (const proc of procs) if (proc.exitCode === null) proc.kill('SIGTERM');
  await Promise.all(procs.map((proc) => (proc.exitCode === null ? new Promise((r) => proc.once('exit', r)) : null)));
  p.kill('SIGKILL');
  fs.rmSync(out, { recursive: true, force: true });
  fs.rmSync(floorBin, { force: true });
  await removeRoot(root);
}

/** The place cycle with the device program on each agent in turn, 50 a block, then the floor. */
async function placeAB(clients: CgstepClient[], scopes: string[], park: string): Promise<void> {
  for (const i of [0, 1]) await agentCycle(clients[i], scopes[i], park, p.pid!, 50, CYCLE_DEVICES, 900000);
  const t: number[][] = [[], []];
  const cpu = [0, 0];
  for (let done = 0; done < cycles; done += 50) {
    for (const i of [0, 1]) {
      const c0 = cpuMs(procs[i].pid!);
      t[i].push(...(await agentCycle(clients[i], scopes[i], park, p.pid!, 50, CYCLE_DEVICES, 1 + done)));
      cpu[i] += cpuMs(procs[i].pid!) - c0;
    }
  }
  for (const c of clients) c.close();
  const ctl = fs.readFileSync(path.join(scopes[0], 'cgroup.subtree_control'), 'utf8').trim().split(/\s+/).filter(Boolean).map((x) => `+${x}`).join(' ');
  const f = summarize(floorCycle(floorBin, scopes[0], park, p.pid!, cycles, ctl, progFile));
  process.stdout.write(`floor median ${f.median.toFixed(3)} ms\n`);
  for (const i of [0, 1]) {
    const s = summarize(t[i]);
    process.stdout.write(`${'AB'[i]} ${repos[i]} ${extra[i].join(' ')}: median ${s.median.toFixed(3)} ms p99 ${s.p99.toFixed(3)} ms, ${(s.median / f.median).toFixed(2)}x the floor; agent CPU ${(cpu[i] / t[i].length).toFixed(3)} ms a cycle\n`);
  }
}

/** AB_CLIENTS: n clients cycling steps on each agent in turn, 3 s a block. */
async function throughputAB(n: number): Promise<void> {
  const got = [0, 1].map(() => ({ lat: [] as number[], seconds: 0 }));
  for (let round = 0; round < 8; round++) {
    for (const i of [0, 1]) {
      const r = await clientsCycling(path.join(out, `${i}.sock`), n, 3000, 1 + (round * 2 + i) * 10_000_000);
      if (round === 0) continue; // connects and warm-up
      got[i].lat.push(...r.lat);
      got[i].seconds += 3;
    }
  }
  for (const i of [0, 1]) {
    const s = summarize(got[i].lat);
    process.stdout.write(`${'AB'[i]} ${repos[i]} ${extra[i].join(' ')}: ${n} clients, ${(got[i].lat.length / got[i].seconds).toFixed(0)} cycles/s, median ${s.median.toFixed(1)} ms p99 ${s.p99.toFixed(1)} ms\n`);
  }
}

/** The process's user + system CPU time so far (all its threads), ms. */
function cpuMs(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(f[11]) + Number(f[12])) * 1000) / 100;
}
