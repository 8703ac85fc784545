/**
 * bench/profile: where the agent's time goes in the step cycle. Starts the
 * agent under `node --cpu-prof` (or strace -c -f with PROFILE=strace), runs
 * the cycle of bench/cycle.ts, stops the agent and prints the top functions by
 * self time (or strace's syscall table). Not part of `npm run bench`:
 *
 *   node --import tsx bench/profile.ts [cycles]            # CPU profile
 *   PROFILE=strace node --import tsx bench/profile.ts 1000 # syscalls per cycle
 *   PROFILE=trace node --import tsx bench/profile.ts 3  # every syscall of those cycles, timed (strace -T -f)
 *   PROFILE=perf node --import tsx bench/profile.ts 1000 # on-CPU time a cycle by syscall and top frame (perf record)
 *   CYCLE=three ...                                        # the three-request cycle
 *   AGENT_FLAGS='--single-threaded-gc' ...                 # node flags added to the #! line's
 *   AGENT_OUT=file ...                                     # the agent's stdout (its log) kept there (else read and dropped)
 *   PROFILE_KEEP=dir ...                                   # the profile's files copied there
 */
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CgstepClient } from '../src/rpc/client.js';
import { CYCLE_DEVICES, agentCycle, type CycleKind } from './cycle.js';
import { REPO, AGENT_NODE_FLAGS, benchRoot, removeRoot, sleeper, waitReady } from './lib.js';

const cycles = Number(process.argv[2] ?? 2000);
const mode = process.env.PROFILE === 'strace' || process.env.PROFILE === 'trace' ? 'strace' : process.env.PROFILE === 'perf' ? 'perf' : 'cpu';
/** PROFILE=trace: every syscall of the agent's main thread with its duration (strace -T), instead of the table. */
const full = process.env.PROFILE === 'trace';
const kind = (process.env.CYCLE ?? 'place') as CycleKind;
const root = benchRoot('profile');
const out = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-profile-'));
const socket = path.join(out, 's.sock');
const p = sleeper();
const nodeFlags = [...AGENT_NODE_FLAGS, ...(process.env.AGENT_FLAGS ?? '').split(' ').filter(Boolean)];
const agentArgs = [path.join(REPO, 'dist/bin/cgstepd.js'), '--ignore-systemd', '--cgroup-root', root, '--socket', socket, '--node-name', 'prof'];
const proc =
  mode === 'cpu'
    ? spawn(process.execPath, [...nodeFlags, '--cpu-prof', '--cpu-prof-dir', out, ...agentArgs], { stdio: ['ignore', 'pipe', 'ignore'] })
    : spawn(process.execPath, [...nodeFlags, ...(mode === 'perf' ? ['--perf-basic-prof'] : []), ...agentArgs], {
        stdio: ['ignore', process.env.AGENT_OUT ? fs.openSync(process.env.AGENT_OUT, 'w') : 'pipe', 'ignore'],
        cwd: out,
      });
// The log to a socket read here, as journald reads it (bench/lib's startAgent).
proc.stdout?.resume();
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
    tracer = spawn('strace', full ? ['-f', '-T', '-tt', '-p', String(proc.pid)] : ['-c', '-f', '-p', String(proc.pid)], { stdio: ['ignore', 'ignore', 'pipe'] });
    tracer.stderr!.on('data', (d) => (traced += d));
    await new Promise((r) => setTimeout(r, 500));
  }
  if (mode === 'perf') {
    // On-CPU samples only (cpu-clock), kernel and JIT symbols: time spent waiting for a CPU on a loaded machine is left out.
    tracer = spawn('perf', ['record', '-g', '-e', 'cpu-clock', '-F', '2000', '-o', path.join(out, 'perf.data'), '-p', String(proc.pid)], { stdio: ['ignore', 'ignore', 'pipe'] });
    tracer.stderr!.on('data', (d) => (traced += d));
    await new Promise((r) => setTimeout(r, 1000));
  }
  const t0 = performance.now();
  await agentCycle(c, scope, park, p.pid!, cycles, CYCLE_DEVICES, 1, kind);
  const took = performance.now() - t0;
  c.close();
  if (tracer) {
    tracer.kill('SIGINT');
    await new Promise((r) => tracer!.once('exit', r));
    if (mode === 'perf') {
      const r = spawnSync('perf', ['script', '-i', path.join(out, 'perf.data'), '-F', 'tid,ip,sym'], { encoding: 'utf8', maxBuffer: 1 << 30 });
      process.stdout.write(`${cycles} cycles (${kind}) in ${took.toFixed(0)} ms\n${perfSummary(r.stdout, cycles, proc.pid!)}`);
      if (process.env.PERF_KEEP) fs.copyFileSync(path.join(out, 'perf.data'), process.env.PERF_KEEP);
    } else process.stdout.write(`${cycles} cycles (${kind}) in ${took.toFixed(0)} ms under strace; syscalls per cycle = calls / ${cycles}\n${traced}`);
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
  if (process.env.PROFILE_KEEP) fs.cpSync(out, process.env.PROFILE_KEEP, { recursive: true });
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

/**
 * On-CPU samples (perf script output, 2,000 a second, with call chains) per
 * cycle, by what they were doing: the system call the kernel was serving (its
 * __x64_sys_* frame), or user space by thread and top frame.
 */
function perfSummary(script: string, cycles: number, mainTid: number): string {
  const bySys = new Map<string, number>();
  const byUser = new Map<string, number>();
  let n = 0;
  for (const block of script.split('\n\n')) {
    const lines = block.trim().split('\n');
    if (lines.length < 2) continue;
    n++;
    const tid = Number(lines[0].trim().split(/\s+/)[0]);
    const frames = lines.slice(1).map((l) => l.trim().split(/\s+/).slice(1).join(' ').replace(/\+0x[0-9a-f]+$/, ''));
    const sys = frames.find((f) => /^__(x64|do)_sys_/.test(f));
    const thread = tid === mainTid ? 'main' : 'other thread';
    const at = sys ? frames.indexOf(sys) : -1;
    // bpf(): which command (the frame under __sys_bpf).
    const cmd = sys && /_bpf$/.test(sys) && at >= 2 ? ` ${frames[at - 2]}` : '';
    if (sys) {
      const key = `${thread} ${sys.replace(/^__(x64|do)_sys_/, '')}${cmd}`;
      bySys.set(key, (bySys.get(key) ?? 0) + 1);
    }
    else {
      const kernel = frames[0] && /^[a-z_0-9.]+$/.test(frames[0]) && frames.some((f) => /^(asm_|entry_|irq|sysvec)/.test(f));
      const key = `${thread} ${kernel ? '(kernel, no syscall: irq/fault/switch)' : frames[0] || '?'}`;
      byUser.set(key, (byUser.get(key) ?? 0) + 1);
    }
  }
  const us = (k: number) => ((k / 2000 / cycles) * 1e6).toFixed(1).padStart(7);
  const sysTotal = [...bySys.values()].reduce((a, b) => a + b, 0);
  const out = [`on-CPU ${us(n)} µs a cycle (all threads), ${us(sysTotal)} in system calls:`];
  for (const [k, v] of [...bySys].sort((a, b) => b[1] - a[1]).slice(0, 25)) out.push(`  ${us(v)} µs  syscall ${k}`);
  out.push('  outside system calls (top frame):');
  for (const [k, v] of [...byUser].sort((a, b) => b[1] - a[1]).slice(0, 25)) out.push(`  ${us(v)} µs  ${k}`);
  return out.join('\n') + '\n';
}
