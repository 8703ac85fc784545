/**
 * The job/step/task tree on the real cgroup2 mount, driven through a real
 * agent over its socket and through the cgstep CLI.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { makeTestRoot, removeTestRoot, MOUNT } from '../helpers/cgroup.js';
import { killPid, spawnSleeper, startAgent, waitFor, sleep, type RunningAgent } from '../helpers/agent.js';

const ctx: { root: string; agent: RunningAgent; scope: string } = {} as any;

test.before(async () => {
  ctx.root = makeTestRoot('tree');
  ctx.agent = await startAgent({ root: ctx.root, args: ['--ignore-systemd', '--node-name', 'n1'] });
  ctx.scope = path.join(ctx.root, 'system.slice', 'n1_slurmstepd.scope');
});

test.after.always(async () => {
  await ctx.agent?.stop();
  fs.rmSync(path.dirname(ctx.agent.socket), { recursive: true, force: true });
  await removeTestRoot(ctx.root);
});

const cgPath = (dir: string) => '/' + path.relative(MOUNT, dir);

test.serial('status reports the scope, mkdir mode, the infinity process and controllers', async (t) => {
  const r = ctx.agent.cli(['--json', 'status']);
  t.is(r.code, 0, r.stderr);
  const s = JSON.parse(r.stdout);
  t.is(s.scope, ctx.scope);
  t.is(s.mode, 'mkdir');
  t.true(fs.readFileSync(path.join(ctx.scope, 'system', 'cgroup.procs'), 'utf8').split('\n').includes(String(s.infinityPid)));
  t.true(s.controllers.available.includes('hugetlb'));
  t.true(s.controllers.enabled.includes('hugetlb'));
  t.is(s.jobs, 0);
  const human = ctx.agent.cli(['status']);
  t.regex(human.stdout, /mkdir mode/);
});

test.serial('step create makes exactly the documented tree with controllers passed down', async (t) => {
  const r = ctx.agent.cli(['--json', 'step', 'create', '11', 'batch']);
  t.is(r.code, 0, r.stderr);
  const job = path.join(ctx.scope, 'job_11');
  const step = path.join(job, 'step_batch');
  t.deepEqual(fs.readdirSync(step, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name).sort(), ['slurm', 'user']);
  for (const d of [ctx.scope, job, step, path.join(step, 'user')]) {
    t.regex(fs.readFileSync(path.join(d, 'cgroup.subtree_control'), 'utf8'), /hugetlb/, d);
  }
  t.regex(fs.readFileSync(path.join(step, 'user', 'cgroup.controllers'), 'utf8'), /hugetlb/);
  t.is(ctx.agent.cli(['destroy', '11']).code, 0);
  t.false(fs.existsSync(job));
});

test.serial('cgstep run: the command first sees itself in its task leaf, and its exit status comes back', async (t) => {
  const r = ctx.agent.cli(['run', '21', '0', '--task', '2', '--', 'cat', '/proc/self/cgroup']);
  t.is(r.code, 0, r.stderr);
  const line = r.stdout.split('\n').find((l) => l.startsWith('0::'));
  t.is(line, `0::${cgPath(path.join(ctx.scope, 'job_21', 'step_0', 'user', 'task_2'))}`);
  t.is(ctx.agent.cli(['run', '21', '0', '--', 'sh', '-c', 'exit 7']).code, 7);
  t.is(ctx.agent.cli(['destroy', '21']).code, 0);
});

test.serial('stats show CPU time after a busy loop, per task, step and job', async (t) => {
  const r = ctx.agent.cli(['run', '31', '1', '--task', '0', '--', process.execPath, '-e', 'for (;;) { for (let i = 0; i < 1e6; i++); if (process.cpuUsage().user >= 300000) break; }']); // 0.3 s of CPU, however loaded the node is
  t.is(r.code, 0, r.stderr);
  const s = JSON.parse(ctx.agent.cli(['--json', 'stats', '31']).stdout);
  t.true(s.total.cpu.usageUsec >= 250000, `job cpu ${s.total.cpu.usageUsec}`);
  const st = s.steps.find((x: any) => x.step === '1');
  t.true(st.tasks['0'].cpu.usageUsec >= 250000);
  t.is(st.total.memory, null, 'memory is "not available" without the controller, not zero');
  t.is(st.total.oomKill, null);
  t.regex(ctx.agent.cli(['stats', '31', '1']).stdout, /task 0 +cpu 0\.[2-9]/);
  t.is(ctx.agent.cli(['destroy', '31']).code, 0);
});

test.serial('attach moves a running process; signal, destroy without and with --force', async (t) => {
  const p = spawnSleeper();
  t.teardown(() => killPid(p.pid));
  t.is(ctx.agent.cli(['step', 'create', '41', '0']).code, 0);
  const a = ctx.agent.cli(['--json', 'attach', '41', '0', String(p.pid), '--task', '5']);
  t.is(a.code, 0, a.stderr);
  t.is(fs.readFileSync(`/proc/${p.pid}/cgroup`, 'utf8').split('\n').find((l) => l.startsWith('0::')), `0::${cgPath(path.join(ctx.scope, 'job_41/step_0/user/task_5'))}`);
  const d = ctx.agent.cli(['destroy', '41', '0']);
  t.is(d.code, 1);
  t.regex(d.stderr, /EBUSY.*1 process/);
  const exited = new Promise((r) => p.once('exit', (_c, sig) => r(sig)));
  const s = ctx.agent.cli(['--json', 'signal', '41', '0', 'TERM']);
  t.is(JSON.parse(s.stdout).processes, 1);
  t.is(await exited, 'SIGTERM');
  const q = spawnSleeper();
  t.teardown(() => killPid(q.pid));
  t.is(ctx.agent.cli(['attach', '41', '0', String(q.pid), '--special']).code, 0);
  const qdead = new Promise((r) => q.once('exit', (_c, sig) => r(sig)));
  const f = ctx.agent.cli(['--json', 'destroy', '41', '--force']);
  t.is(f.code, 0, f.stderr);
  t.is(JSON.parse(f.stdout).killed, 1);
  t.is(await qdead, 'SIGKILL');
  t.false(fs.existsSync(path.join(ctx.scope, 'job_41')));
});

test.serial('freeze stops a busy loop from accruing CPU; thaw resumes it; events report both', async (t) => {
  const c = await ctx.agent.client();
  const events: any[] = [];
  const ec = await ctx.agent.client();
  await ec.events((e) => events.push(e));
  t.teardown(async () => {
    await c.request('destroy', { job: 51, force: true }).catch(() => undefined);
    c.close();
    ec.close();
  });
  await c.request('step.create', { job: 51, step: 0 });
  const { spawn } = await import('node:child_process');
  const busy = spawn(process.execPath, ['-e', 'for(;;);'], { stdio: 'ignore' });
  t.teardown(() => killPid(busy.pid));
  await c.request('attach', { job: 51, step: 0, pid: busy.pid!, task: 0 });
  await sleep(200);
  await c.request('freeze', { job: 51, step: 0 });
  const u1 = (await c.request('stats', { job: 51, step: 0 })).steps[0].tasks['0'].cpu.usageUsec;
  await sleep(500);
  const u2 = (await c.request('stats', { job: 51, step: 0 })).steps[0].tasks['0'].cpu.usageUsec;
  t.true(u2 - u1 < 20000, `frozen task ran ${u2 - u1} µs`);
  await c.request('thaw', { job: 51, step: 0 });
  // Runs again: 100 ms of CPU soon (not timed: on a loaded machine it may take a while).
  await waitFor(async () => (await c.request('stats', { job: 51, step: 0 })).steps[0].tasks['0'].cpu.usageUsec - u2 > 100000, 20000, 'the thawed task to run');
  await waitFor(() => events.some((e) => e.event === 'thawed'), 3000, 'thawed event');
  t.true(events.some((e) => e.event === 'frozen' && e.job === '51' && e.step === '0'));
  await c.request('destroy', { job: 51, force: true });
  await waitFor(() => events.some((e) => e.event === 'task.empty' && e.task === '0'), 3000, 'task.empty event');
});

test.serial('a restarted agent keeps live steps and still manages them', async (t) => {
  const p = spawnSleeper();
  t.teardown(() => killPid(p.pid));
  t.is(ctx.agent.cli(['step', 'create', '61', '3']).code, 0);
  t.is(ctx.agent.cli(['attach', '61', '3', String(p.pid), '--task', '0']).code, 0);
  const before = JSON.parse(ctx.agent.cli(['--json', 'status']).stdout);
  ctx.agent.keepSocketDir = true;
  const first = ctx.agent;
  t.is(await ctx.agent.stop('SIGTERM'), 0);
  t.is(p.exitCode, null, 'the step process survives the agent stopping');
  ctx.agent = await startAgent({ root: ctx.root, socket: first.socket, args: ['--ignore-systemd', '--node-name', 'n1'] });
  const after = JSON.parse(ctx.agent.cli(['--json', 'status']).stdout);
  t.true(after.adopted);
  t.is(after.infinityPid, before.infinityPid);
  t.is(after.jobs, 1);
  const l = JSON.parse(ctx.agent.cli(['--json', 'list']).stdout);
  t.deepEqual(l.jobs.map((j: any) => [j.job, j.steps.map((s: any) => [s.step, s.tasks])]), [['61', [['3', ['task_0']]]]]);
  const dead = new Promise((r) => p.once('exit', (_c, sig) => r(sig)));
  t.is(ctx.agent.cli(['signal', '61', '3', 'KILL']).code, 0);
  t.is(await dead, 'SIGKILL');
  t.is(ctx.agent.cli(['destroy', '61']).code, 0);
});

test.serial('the infinity process is replaced when it dies', async (t) => {
  const s = JSON.parse(ctx.agent.cli(['--json', 'status']).stdout);
  process.kill(s.infinityPid, 'SIGKILL');
  await waitFor(() => {
    const n = JSON.parse(ctx.agent.cli(['--json', 'status']).stdout);
    return n.infinityPid !== s.infinityPid && fs.readFileSync(path.join(ctx.scope, 'system/cgroup.procs'), 'utf8').includes(String(n.infinityPid));
  }, 8000, 'a new infinity process');
  t.pass();
});

test.serial('destroy with reapJob removes the job with its last step, and a retried destroy of a gone step still reaps it', async (t) => {
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  await c.request('step.create', { job: '71', step: '0' });
  await c.request('step.create', { job: '71', step: '1' });
  const job = path.join(ctx.scope, 'job_71');
  let r = await c.request('destroy', { job: '71', step: '0', reapJob: true });
  t.false(r.jobRemoved, 'step 1 is still there');
  t.true(fs.existsSync(job));
  r = await c.request('destroy', { job: '71', step: '1', reapJob: true });
  t.true(r.jobRemoved);
  t.false(fs.existsSync(job));
  // The step was removed but the job's removal was never acknowledged (agent killed in between).
  await c.request('step.create', { job: '72', step: '0' });
  fs.rmdirSync(path.join(ctx.scope, 'job_72', 'step_0', 'user'));
  fs.rmdirSync(path.join(ctx.scope, 'job_72', 'step_0', 'slurm'));
  fs.rmdirSync(path.join(ctx.scope, 'job_72', 'step_0'));
  r = await c.request('destroy', { job: '72', step: '0', reapJob: true });
  t.like(r, { existed: false, jobRemoved: true });
  t.false(fs.existsSync(path.join(ctx.scope, 'job_72')));
  // Without reapJob the empty job stays; a gone job is success.
  await c.request('step.create', { job: '73', step: '0' });
  r = await c.request('destroy', { job: '73', step: '0' });
  t.false(r.jobRemoved);
  t.like(await c.request('destroy', { job: '73', step: '9', reapJob: true }), { existed: false, jobRemoved: true });
  t.like(await c.request('destroy', { job: '73', step: '0', reapJob: true }), { existed: false, jobRemoved: true });
});

test.serial('destroy removes task leaves it never watched or made, and copes with a watched one already gone', async (t) => {
  const c = await ctx.agent.client();
  const p = spawnSleeper();
  t.teardown(async () => {
    killPid(p.pid);
    await c.request('destroy', { job: '74', force: true }).catch(() => undefined);
    c.close();
  });
  const user = (step: string) => path.join(ctx.scope, 'job_74', `step_${step}`, 'user');
  // Step 0: a placed task (watched) and a leaf made behind the agent. Step 1: only a leaf made behind it.
  await c.request('task.place', { job: '74', step: '0', pid: p.pid!, task: 0 });
  fs.mkdirSync(path.join(user('0'), 'task_7'));
  await c.request('step.create', { job: '74', step: '1' });
  fs.mkdirSync(path.join(user('1'), 'task_3'));
  fs.mkdirSync(path.join(user('1'), 'task_3', 'extra'));
  t.like(await c.request('destroy', { job: '74', step: '1' }), { existed: true });
  t.false(fs.existsSync(path.dirname(user('1'))));
  // Step 2: a placed task whose leaf is removed by hand after it emptied.
  await c.request('task.place', { job: '74', step: '2', pid: p.pid!, task: 5 });
  fs.writeFileSync(path.join(user('0'), 'task_0', 'cgroup.procs'), String(p.pid));
  fs.rmdirSync(path.join(user('2'), 'task_5'));
  t.like(await c.request('destroy', { job: '74', step: '2' }), { existed: true });
  t.false(fs.existsSync(path.dirname(user('2'))));
  killPid(p.pid);
  await waitFor(() => !/populated 1/.test(fs.readFileSync(path.join(ctx.scope, 'job_74', 'cgroup.events'), 'utf8')), 5000, 'job 74 empty');
  t.like(await c.request('destroy', { job: '74' }), { existed: true, jobRemoved: true });
  t.false(fs.existsSync(path.join(ctx.scope, 'job_74')));
});
