/**
 * bench/ab: two agents side by side over the place cycle (with the device
 * program of bench/cycle), in alternating blocks of 50, and the floor after
 * them: for telling whether a change to the agent gains anything on a shared
 * machine. Not part of `npm run bench`:
 *
 *   node --import tsx bench/ab.ts [cycles] [A's extra cgstepd args] [B's]
 *   AB_A=/path/to/other/checkout node --import tsx bench/ab.ts 1000   # A runs that checkout's dist/
 *   AB_LOG=null ...   # the agents' logs to /dev/null (default: a socket this process reads, as journald does)
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CgstepClient } from '../src/rpc/client.js';
import { buildRuleSet, compile } from '../src/devices/index.js';
import { CYCLE_DEVICES, agentCycle, buildFloor, floorCycle } from './cycle.js';
import { REPO, AGENT_NODE_FLAGS, benchRoot, removeRoot, sleeper, summarize, waitReady } from './lib.js';

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
} finally {
  for (const proc of procs) if (proc.exitCode === null) proc.kill('SIGTERM');
  await Promise.all(procs.map((proc) => (proc.exitCode === null ? new Promise((r) => proc.once('exit', r)) : null)));
  p.kill('SIGKILL');
  fs.rmSync(out, { recursive: true, force: true });
  fs.rmSync(floorBin, { force: true });
  await removeRoot(root);
}

/** The process's user + system CPU time so far (all its threads), ms. */
function cpuMs(pid: number): number {
  const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').slice(fs.readFileSync(`/proc/${pid}/stat`, 'utf8').lastIndexOf(')') + 2).split(' ');
  return ((Number(f[11]) + Number(f[12])) * 1000) / 100;
}
