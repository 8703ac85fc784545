/**
 * Runs INSIDE the VM (test/vm/vm.test.ts boots it; never on the host: the name
 * does not match test/**\/*.test.ts). A pure cgroup v2 hierarchy with every
 * controller, busybox as init, the host's tree on an overlay root. One agent in
 * mkdir mode (--ignore-systemd) for the file, on its own directory under the
 * cgroup2 mount, with a cgroup.conf whose memory formulas are not the identity
 * and a gres.conf of two fake GPUs. Each test title starts with the number of
 * the lane's point it proves; the host reports them per point.
 */
import test from 'ava';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { makeTestRoot, removeTestRoot, MOUNT } from '../../helpers/cgroup.js';
import { startAgent, waitFor, sleep, killPid, CGSTEP, type RunningAgent } from '../../helpers/agent.js';
import type { CgstepClient } from '../../../src/rpc/client.js';
import type { AgentEvent } from '../../../src/rpc/protocol.js';

const WANT = ['cpuset', 'cpu', 'io', 'memory', 'pids'];
const MiB = 1024 * 1024;
const PAGE = 4096;
const NODE = 'vm1';

const ctx = {} as {
  root: string;
  scope: string;
  tmp: string;
  agent: RunningAgent;
  c: CgstepClient;
  kids: ChildProcess[];
};
ctx.kids = [];

test.before(async () => {
  ctx.tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-vm-guest-'));
  const conf = path.join(ctx.tmp, 'cgroup.conf');
  fs.writeFileSync(
    conf,
    ['ConstrainRAMSpace=yes', 'AllowedRAMSpace=125', 'MaxRAMPercent=50', 'MinRAMSpace=30', 'ConstrainSwapSpace=yes', 'AllowedSwapSpace=50', 'MaxSwapPercent=100', 'ConstrainCores=yes', 'ConstrainDevices=yes', ''].join('\n'),
  );
  // Two fake GPUs: no driver behind major 195, so an allowed open gives ENXIO, a denied one EPERM.
  for (const i of [0, 1]) {
    const r = spawnSync('mknod', [path.join(ctx.tmp, `nvidia${i}`), 'c', '195', String(i)]);
    if (r.status !== 0) throw new Error(`mknod: ${r.stderr}`);
  }
  const gres = path.join(ctx.tmp, 'gres.conf');
  fs.writeFileSync(gres, `NodeName=${NODE} Name=gpu File=${ctx.tmp}/nvidia[0-1]\n`);
  ctx.root = makeTestRoot('vm');
  ctx.scope = path.join(ctx.root, 'system.slice', `${NODE}_slurmstepd.scope`);
  ctx.agent = await startAgent({ root: ctx.root, args: ['--ignore-systemd', '--node-name', NODE, '--config', conf, '--gres', gres, '--log-level', 'info'] });
  ctx.c = await ctx.agent.client();
});

test.after.always(async () => {
  for (const k of ctx.kids) killPid(k.pid);
  ctx.c?.close();
  await ctx.agent?.stop();
  if (ctx.root) await removeTestRoot(ctx.root);
  if (ctx.tmp) fs.rmSync(ctx.tmp, { recursive: true, force: true });
});

const read = (f: string) => fs.readFileSync(f, 'utf8').trim();
const words = (f: string) => read(f).split(/\s+/).filter(Boolean);
const stepDir = (job: string, step: string) => path.join(ctx.scope, `job_${job}`, `step_${step}`);
const userDir = (job: string, step: string) => path.join(stepDir(job, step), 'user');
const populated = (dir: string) => /populated 1/.test(read(path.join(dir, 'cgroup.events')));
const cli = (args: string[]) => ctx.agent.cli(args);

/** A process of ours to be placed by attach; ended by pid at the end of the file at the latest. */
function sleeper(): ChildProcess {
  const p = spawn('sleep', ['600'], { stdio: 'ignore' });
  ctx.kids.push(p);
  return p;
}

/** `cgstep run` in the background (the client waits for CMD); ended by the job's destroy --force. */
function runInBackground(args: string[]): ChildProcess {
  const p = spawn(process.execPath, [CGSTEP, '--socket', ctx.agent.socket, 'run', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  ctx.kids.push(p);
  return p;
}

async function destroy(job: string): Promise<void> {
  await ctx.c.request('destroy', { job, force: true });
}

test.serial('1 controllers: enabled top-down from the cgroup2 mount to the scope and below; a task leaf lists memory cpu cpuset pids io', async (t) => {
  t.teardown(() => destroy('1'));
  const st = JSON.parse(cli(['--json', 'status']).stdout);
  t.log(`status: ${st.mode} mode, scope ${st.scope}, enabled ${st.controllers.enabled.join(' ')}, missing ${st.controllers.missing.join(' ') || '-'}`);
  for (const c of WANT) t.true(st.controllers.enabled.includes(c), `status says ${c} is enabled`);
  const p = sleeper();
  await ctx.c.request('step.create', { job: '1', step: '0' });
  await ctx.c.request('attach', { job: '1', step: '0', pid: p.pid!, task: 0 });
  const chain = [MOUNT, ctx.root, path.join(ctx.root, 'system.slice'), ctx.scope, path.join(ctx.scope, 'job_1'), stepDir('1', '0'), userDir('1', '0')];
  for (const d of chain) {
    const on = words(path.join(d, 'cgroup.subtree_control'));
    t.log(`${path.relative(MOUNT, d) || '/'}: subtree_control ${on.join(' ')}`);
    for (const c of WANT) t.true(on.includes(c), `${c} enabled in ${d}/cgroup.subtree_control`);
  }
  const task = path.join(userDir('1', '0'), 'task_0');
  const ctl = words(path.join(task, 'cgroup.controllers'));
  t.log(`task_0 cgroup.controllers: ${ctl.join(' ')}`);
  for (const c of WANT) t.true(ctl.includes(c), `${c} in the task leaf's cgroup.controllers`);
  t.true(read(path.join(task, 'cgroup.procs')).split('\n').includes(String(p.pid)));
  t.is(read(path.join(task, 'cgroup.subtree_control')), '', 'the task is a leaf');
});

test.serial('2 memory: --memory 64M and a 200 MB allocation: OOM-killed, the oom event arrives while the step lives, cgstep stats shows oom_kill 1', async (t) => {
  t.teardown(() => destroy('2'));
  const events: (AgentEvent & { stepPopulated: boolean; holderAlive: boolean })[] = [];
  const ev = await ctx.agent.client();
  t.teardown(() => ev.close());
  const holder = sleeper();
  await ev.events((e) => {
    // Recorded the moment the event arrives: is the step still alive then?
    let alive = true;
    try {
      process.kill(holder.pid!, 0);
    } catch {
      alive = false;
    }
    events.push({ ...e, stepPopulated: fs.existsSync(stepDir('2', '0')) && populated(stepDir('2', '0')), holderAlive: alive });
  });
  const made = cli(['step', 'create', '2', '0', '--memory', '64M']);
  t.is(made.code, 0, made.stderr);
  // Task 0 holds the step open; task 1 allocates 200 MB in one read() (dd's buffer).
  await ctx.c.request('attach', { job: '2', step: '0', pid: holder.pid!, task: 0 });
  t.log(`user/: memory.max ${read(path.join(userDir('2', '0'), 'memory.max'))}, memory.high ${read(path.join(userDir('2', '0'), 'memory.high'))}`);
  const t0 = Date.now();
  const dd = spawnSync(process.execPath, [CGSTEP, '--socket', ctx.agent.socket, 'run', '2', '0', '--task', '1', '--', 'dd', 'if=/dev/zero', 'of=/dev/null', 'bs=200M', 'count=1'], { encoding: 'utf8', timeout: 120000 });
  t.log(`dd: exit ${dd.status} after ${Date.now() - t0} ms ${dd.stderr.trim()}`);
  t.is(dd.status, 137, 'dd is killed by SIGKILL (128+9)');
  await waitFor(() => events.some((e) => e.event === 'oom'), 10000, 'the oom event').catch((err) => {
    t.log(`events so far: ${JSON.stringify(events)}`);
    t.log(`memory.events: ${read(path.join(stepDir('2', '0'), 'memory.events'))}`);
    throw err;
  });
  const oom = events.find((e) => e.event === 'oom')!;
  t.log(`event: ${JSON.stringify(oom)}`);
  t.is(oom.job, '2');
  t.is(oom.step, '0');
  t.is(oom.oomKill, 1);
  t.true(oom.stepPopulated, 'the step was still populated when the oom event arrived');
  t.true(oom.holderAlive, "the step's other task was alive when the oom event arrived");
  t.true(populated(stepDir('2', '0')), 'the step lives on');
  const human = cli(['stats', '2', '0']);
  t.log(human.stdout.trim());
  t.regex(human.stdout, /step 0 .*oom_kill 1\b/);
  const js = JSON.parse(cli(['--json', 'stats', '2', '0']).stdout);
  t.is(js.steps[0].total.oomKill, 1);
  t.true(events.every((e) => e.event !== 'step.empty'), 'no step.empty: the step never ended');
});

/** Slurm's formulas with this file's cgroup.conf, by hand: AllowedRAMSpace=125, MaxRAMPercent=50, MinRAMSpace=30, AllowedSwapSpace=50, MaxSwapPercent=100. */
function expected(alloc: number, ram: number) {
  const pct = (v: number, p: number) => Math.floor((v * p) / 100);
  const clamp = (v: number, lo: number, hi: number) => Math.min(Math.max(v, lo), hi);
  const max = clamp(pct(alloc, 125), 30 * MiB, pct(ram, 50));
  const high = Math.min(clamp(alloc, 30 * MiB, pct(ram, 50)), max);
  const memsw = clamp(pct(alloc, 50) + max, 30 * MiB, pct(ram, 100) + pct(ram, 50));
  // The kernel stores page counts: what reads back is rounded down to a page.
  const page = (v: number) => Math.floor(v / PAGE) * PAGE;
  return { 'memory.max': page(max), 'memory.high': page(high), 'memory.swap.max': page(memsw - max) };
}

test.serial('2 memory: memory.max, memory.high and memory.swap.max follow cgroup.conf formulas (AllowedRAMSpace, MinRAMSpace, MaxRAMPercent, AllowedSwapSpace) and read back equal', async (t) => {
  t.teardown(() => destroy('22'));
  const ram = os.totalmem();
  const cases: [string, number][] = [['64M', 64 * MiB], ['10M', 10 * MiB], ['4G', 4096 * MiB]];
  // By hand for 64M: max = 64M*125% = 80M, high = 64M, swap = (64M*50% + 80M) - 80M = 32M.
  t.deepEqual(expected(64 * MiB, ram), { 'memory.max': 80 * MiB, 'memory.high': 64 * MiB, 'memory.swap.max': 32 * MiB });
  for (const [i, [arg, bytes]] of cases.entries()) {
    const r = cli(['step', 'create', '22', String(i), '--memory', arg]);
    t.is(r.code, 0, r.stderr);
    const want = expected(bytes, ram);
    const got = Object.fromEntries(Object.keys(want).map((f) => [f, Number(read(path.join(userDir('22', String(i)), f)))]));
    t.log(`--memory ${arg} (RAM ${ram}): ${JSON.stringify(got)}`);
    t.deepEqual(got, want, `--memory ${arg}`);
  }
});

test.serial("2 memory: root's task.place puts jobLimits in force on an existing job (a step daemon's one request), as job.create would", async (t) => {
  t.teardown(() => Promise.all([destroy('23'), destroy('24')]));
  const kids = [0, 1].map(() => spawn('sleep', ['60'], { stdio: 'ignore' }));
  t.teardown(() => kids.forEach((k) => killPid(k.pid)));
  const jobMax = (job: string) => read(path.join(path.dirname(stepDir(job, '0')), 'memory.max'));
  await ctx.c.request('task.place', { job: '23', step: '0', pid: kids[0].pid!, leaf: 'slurm', jobLimits: { memory: 64 * MiB } });
  const made = jobMax('23');
  await ctx.c.request('task.place', { job: '23', step: '1', pid: kids[1].pid!, leaf: 'slurm', jobLimits: { memory: 128 * MiB } });
  t.is(cli(['job', 'create', '24', '--memory', '128M']).code, 0);
  t.not(jobMax('23'), made, 'changed by the second step');
  t.is(jobMax('23'), jobMax('24'), 'the same as job.create with 128M');
  t.is(read(path.join(userDir('23', '0'), '..', 'slurm', 'cgroup.procs')), String(kids[0].pid), 'the first step keeps its daemon');
});

test.serial('3 cpuset: a step limited to CPU 0 shows Cpus_allowed_list: 0; without it 0-1', async (t) => {
  t.teardown(() => destroy('3'));
  t.is(os.cpus().length, 2, 'the VM has two CPUs');
  const one = cli(['run', '3', '0', '--cpus', '0', '--', 'grep', 'Cpus_allowed_list', '/proc/self/status']);
  t.is(one.code, 0, one.stderr);
  t.log(`--cpus 0: ${one.stdout.trim()}`);
  t.regex(one.stdout, /^Cpus_allowed_list:\s+0$/m);
  t.is(read(path.join(userDir('3', '0'), 'cpuset.cpus.effective')), '0');
  const all = cli(['run', '3', '1', '--', 'grep', 'Cpus_allowed_list', '/proc/self/status']);
  t.is(all.code, 0, all.stderr);
  t.regex(all.stdout, /^Cpus_allowed_list:\s+0-1$/m);
});

const cpuStat = (dir: string) => Object.fromEntries(read(path.join(dir, 'cpu.stat')).split('\n').map((l) => { const [k, v] = l.split(' '); return [k, Number(v)]; }));

test.serial('3 cpu.max: "25000 100000" holds a busy loop to about a quarter of a CPU over a second (tolerance 0.10-0.40)', async (t) => {
  t.teardown(() => destroy('33'));
  const loop = runInBackground(['33', '0', '--cpu-max', '25000 100000', '--', 'sh', '-c', 'while :; do :; done']);
  const user = userDir('33', '0');
  await waitFor(() => fs.existsSync(path.join(user, 'task_0')) && populated(path.join(user, 'task_0')), 30000, 'the busy loop in its task');
  t.is(read(path.join(user, 'cpu.max')), '25000 100000');
  await sleep(500);
  const a = cpuStat(user);
  const w0 = performance.now();
  await sleep(1000);
  const b = cpuStat(user);
  const wall = (performance.now() - w0) * 1000;
  const share = (b.usage_usec - a.usage_usec) / wall;
  t.log(`busy loop under cpu.max 25000/100000: ${(share * 100).toFixed(1)}% of a CPU over ${(wall / 1e6).toFixed(2)} s; nr_throttled +${b.nr_throttled - a.nr_throttled}, throttled ${((b.throttled_usec - a.throttled_usec) / 1000).toFixed(0)} ms`);
  t.true(share > 0.1 && share < 0.4, `share ${share.toFixed(3)} within 0.10-0.40`);
  t.true(b.nr_throttled > a.nr_throttled, 'the kernel throttled it');
  t.truthy(loop.pid);
});

test.serial('4 pids: --pids 16 lets the step hold 16 processes; the fork that would make the 17th fails with EAGAIN', async (t) => {
  t.teardown(() => destroy('4'));
  // perl is process 1 of the step; it forks until a fork fails, then ends its children.
  const script = [
    'my @k; my $i;',
    'for $i (1..40) { my $p = fork(); if (!defined $p) { printf "fork %d failed errno %d (%s) with %d processes\\n", $i, $!+0, $!, scalar(@k)+1; last } if ($p == 0) { sleep 60; exit 0 } push @k, $p }',
    'open(my $f, "<", $ARGV[0]) or die; my $cur = <$f>; chomp $cur; print "pids.current $cur\\n";',
    "kill 'KILL', @k; waitpid($_, 0) for @k;",
  ].join(' ');
  const r = cli(['run', '4', '0', '--pids', '16', '--', 'perl', '-e', script, path.join(userDir('4', '0'), 'pids.current')]);
  t.is(r.code, 0, r.stderr);
  t.log(r.stdout.trim());
  t.regex(r.stdout, /^fork 16 failed errno 11 \(Resource temporarily unavailable\) with 16 processes$/m);
  t.regex(r.stdout, /^pids.current 16$/m);
  t.is(read(path.join(userDir('4', '0'), 'pids.max')), '16');
  // Where the kernel counts the failure (pids.events "max") moved between versions (the limiting
  // cgroup, or the forking task's): only logged.
  t.log(`pids.events max: user/ ${read(path.join(userDir('4', '0'), 'pids.events'))}, task_0/ ${read(path.join(userDir('4', '0'), 'task_0', 'pids.events'))}`);
});

/** errno of open() for each "r:/path" or "rw:/path" inside the step (0 = opened). */
function probeScript(): string {
  return 'for (@ARGV) { my ($m, $p) = split /:/, $_, 2; my $ok = open(my $f, $m eq "r" ? "<" : "+<", $p); print "$m:$p=", ($ok ? 0 : $!+0), "\\n" }';
}
function probe(args: string[], targets: string[]): Record<string, number> {
  const r = cli(['run', ...args, '--', 'perl', '-e', probeScript(), ...targets]);
  if (r.code !== 0) throw new Error(`probe failed (${r.code}): ${r.stderr}`);
  return Object.fromEntries(r.stdout.trim().split('\n').map((l) => { const i = l.lastIndexOf('='); return [l.slice(0, i), Number(l.slice(i + 1))]; }));
}

test.serial('5 devices: eBPF device programs in the guest: gres allocation (open policy), closed policy with an explicit allow', async (t) => {
  t.teardown(() => destroy('5'));
  const st = JSON.parse(cli(['--json', 'status']).stdout);
  t.log(`status devices: ${JSON.stringify(st.devices)}`);
  t.true(st.devices?.supported, 'the agent has BPF device control in the guest');
  const gpu0 = `rw:${ctx.tmp}/nvidia0`;
  const gpu1 = `rw:${ctx.tmp}/nvidia1`;
  const ENXIO = 6;
  const EPERM = 1;
  // Open policy, gpu:0 allocated: gpu0 reaches the (absent) driver, gpu1 is denied, the rest is open.
  const open = probe(['5', '0', '--gres', 'gpu:0'], [gpu0, gpu1, 'rw:/dev/null', 'r:/dev/kmsg']);
  t.log(`open, --gres gpu:0: ${JSON.stringify(open)}`);
  t.deepEqual(open, { [gpu0]: ENXIO, [gpu1]: EPERM, 'rw:/dev/null': 0, 'r:/dev/kmsg': 0 });
  // Closed policy: pseudo-devices only, plus an explicit read-only allow of /dev/kmsg.
  const closed = probe(['5', '1', '--device-policy', 'closed', '--device-allow', 'c 1:11 r'], [gpu0, 'rw:/dev/null', 'r:/dev/kmsg', 'rw:/dev/kmsg', 'r:/dev/mem']);
  t.log(`closed, allow c 1:11 r: ${JSON.stringify(closed)}`);
  t.deepEqual(closed, { [gpu0]: EPERM, 'rw:/dev/null': 0, 'r:/dev/kmsg': 0, 'rw:/dev/kmsg': EPERM, 'r:/dev/mem': EPERM });
  // An explicit deny in the open policy.
  const denied = probe(['5', '2', '--device-deny', 'c 1:5 rwm'], ['r:/dev/zero', 'r:/dev/null']);
  t.log(`open, deny c 1:5: ${JSON.stringify(denied)}`);
  t.deepEqual(denied, { 'r:/dev/zero': EPERM, 'r:/dev/null': 0 });
  const stats = cli(['stats', '5']);
  t.log(stats.stdout.trim());
  t.regex(stats.stdout, /devices: default deny/);
});
