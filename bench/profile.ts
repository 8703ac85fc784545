/**
 * bench/profile: where the agent's time goes in the step cycle. Starts the
 * agent under `node --cpu-prof` (or strace -c -f with PROFILE=strace), runs
 * the cycle of bench/cycle.ts, stops the agent and prints the top functions by
 * self time (or strace's syscall table). Not part of `npm run bench`:
 *
 *   node --import tsx bench/profile.ts [cycles]            # CPU profile
 *   PROFILE=strace node --import tsx bench/profile.ts 1000 # syscalls per cycle
 *   CYCLE=three ...                                        # the three-request cycle
 *   AGENT_FLAGS='--single-threaded-gc' ...                 # node flags added to the #! line's
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CgstepClient } from '../src/rpc/client.js';
import { CYCLE_DEVICES, agentCycle, type CycleKind } from './cycle.js';
import { REPO, AGENT_NODE_FLAGS, benchRoot, removeRoot, sleeper, waitReady } from './lib.js';

const cycles = Number(process.argv[2] ?? 2000);
const mode = process.env.PROFILE === 'strace' ? 'strace' : 'cpu';
const kind = (process.env.CYCLE ?? 'place') as CycleKind;
const root = benchRoot('profile');
const out = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-profile-'));
const socket = path.join(out, 's.sock');
const p = sleeper();
const nodeFlags = [...AGENT_NODE_FLAGS, ...(process.env.AGENT_FLAGS ?? '').split(' ').filter(Boolean)];
const agentArgs = [path.join(REPO, 'dist/bin/cgstepd.js'), '--ignore-systemd', '--cgroup-root', root, '--socket', socket, '--node-name', 'prof'];
const proc =
  mode === 'cpu'
    ? spawn(process.execPath, [...nodeFlags, '--cpu-prof', '--cpu-prof-dir', out, ...agentArgs], { stdio: 'ignore' })
    : spawn(process.execPath, [...nodeFlags, ...agentArgs], { stdio: 'ignore' });
try {
  await waitReady(socket, proc);
  const park = path.join(root, 'park');
  fs.mkdirSync(park);
  fs.writeFileSync(path.join(park, 'cgroup.procs'), String(p.pid));
  const scope = path.join(root, 'system.slice', 'prof_slurmstepd.scope');
  const c = await CgstepClient.connect(socket);
  await agentCycle(c, scope, park, p.pid!, 50, CYCLE_DEVICES, 800000, kind);
  let tracer: ReturnType<typeof spawn> | null = null;
  let traced = '';
  if (mode === 'strace') {
    tracer = spawn('strace', ['-c', '-f', '-p', String(proc.pid)], { stdio: ['ignore', 'ignore', 'pipe'] });
    tracer.stderr!.on('data', (d) => (traced += d));
    await new Promise((r) => setTimeout(r, 500));
  }
  const t0 = performance.now();
  await agentCycle(c, scope, park, p.pid!, cycles, CYCLE_DEVICES, 1, kind);
  const took = performance.now() - t0;
  c.close();
  if (tracer) {
    tracer.kill('SIGINT');
    await new Promise((r) => tracer!.once('exit', r));
    process.stdout.write(`${cycles} cycles (${kind}) in ${took.toFixed(0)} ms under strace; syscalls per cycle = calls / ${cycles}\n${traced}`);
  }
  proc.kill('SIGTERM');
  await new Promise((r) => proc.once('exit', r));
  if (mode === 'cpu') {
    process.stdout.write(`${cycles} cycles (${kind}) in ${took.toFixed(0)} ms, ${((took / cycles) * 1000).toFixed(0)} µs each\n`);
    const file = fs.readdirSync(out).find((f) => f.endsWith('.cpuprofile'))!;
    for (const l of topFunctions(JSON.parse(fs.readFileSync(path.join(out, file), 'utf8')), 30)) process.stdout.write(l + '\n');
  }
} finally {
  if (proc.exitCode === null) proc.kill('SIGKILL');
  p.kill('SIGKILL');
  fs.rmSync(out, { recursive: true, force: true });
  await removeRoot(root);
}

interface ProfNode { id: number; callFrame: { functionName: string; url: string; lineNumber: number }; children?: number[] }

/** Self time per function (summed over the profile's nodes), the largest first. */
function topFunctions(prof: { nodes: ProfNode[]; samples: number[]; timeDeltas: number[] }, n: number): string[] {
  const byId = new Map(prof.nodes.map((x) => [x.id, x]));
  const self = new Map<string, number>();
  let total = 0;
  prof.samples.forEach((id, i) => {
    const dt = prof.timeDeltas[i] ?? 0;
    total += dt;
    const f = byId.get(id)!.callFrame;
    const key = `${f.functionName || '(anonymous)'} ${f.url.replace(/^.*\/(node_modules|src|dist)\//, '$1/')}:${f.lineNumber + 1}`;
    self.set(key, (self.get(key) ?? 0) + dt);
  });
  return [...self.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, n)
    .map(([k, v]) => `${((100 * v) / total).toFixed(1).padStart(5)}%  ${(v / 1000).toFixed(0).padStart(6)} ms  ${k}`);
}
