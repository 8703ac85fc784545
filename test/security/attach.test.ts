/**
 * An allowed uid could attach a root process, another user's process, pid 1,
 * or the agent by one of its thread ids (the kernel moves the whole thread
 * group when handed any thread id), and then freeze or kill it. Each attack,
 * run as a real other uid through setpriv against a real agent: refused, and
 * the target stays where it was. The process checks hold for root too.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSleeper, waitFor } from '../helpers/agent.js';
import { cgstepAs, nodeOutputAs, requestsAs, spawnAs, type TestUser, withTwoUsers } from '../helpers/users.js';
import { aKernelThread, cgroupOf, threadsOf } from './helpers.js';

const ctx = withTwoUsers(test, 'attach', [], (c) => {
  const r = cgstepAs(c.alice, c.agent.socket, ['step', 'create', '601', '0']);
  if (r.code !== 0) throw new Error(`alice cannot create her step: ${r.stderr}`);
});

const attach = (u: TestUser, pid: number, job = '601') => cgstepAs(u, ctx.agent.socket, ['attach', job, '0', String(pid), '--task', '0']);

function refused(t: any, r: ReturnType<typeof attach>, why: RegExp) {
  t.is(r.code, 1, r.stdout);
  t.is(r.error?.code, 'EPERM', r.stderr);
  t.regex(r.error?.message ?? '', why);
}

/** What a user is told of a process that is not its own: that alone, with no other uid and nothing of what it is. */
const notHers = (pid: number) => new RegExp(`^pid ${pid} is not a process of uid ${ctx.alice.uid}; uid ${ctx.alice.uid} may move only its own processes \\(every one of their uids its own\\)$`);

test('the agent cannot be moved by one of its thread ids, by an allowed uid or by root', async (t) => {
  const before = cgroupOf(ctx.agent.pid);
  const [tid] = await threadsOf(ctx.agent.pid);
  refused(t, attach(ctx.alice, tid), notHers(tid));
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  const e: any = await t.throwsAsync(c.request('attach', { job: 601, step: 0, pid: tid, task: 0 }));
  t.is(e.code, 'EPERM');
  t.regex(e.message, /is cgstepd itself \(one of its threads\)/, 'root is told what it is');
  t.is(cgroupOf(ctx.agent.pid), before, 'the agent moved');
  // And it still answers.
  t.is(cgstepAs(ctx.alice, ctx.agent.socket, ['status']).code, 0);
});

test('pid 1 and a kernel thread are refused (also to root)', async (t) => {
  refused(t, attach(ctx.alice, 1), notHers(1));
  const kt = aKernelThread();
  const before = cgroupOf(kt);
  refused(t, attach(ctx.alice, kt), notHers(kt));
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  for (const pid of [1, 2, kt]) {
    const e: any = await t.throwsAsync(c.request('attach', { job: 601, step: 0, pid, task: 0 }));
    t.is(e.code, 'EPERM', `pid ${pid}`);
    t.regex(e.message, pid === 1 ? /is PID 1/ : /is a kernel thread/);
  }
  t.is(cgroupOf(kt), before);
});

test("a root process and another user's process are refused; the user's own is moved", async (t) => {
  const rootSleep = spawnSleeper();
  const bobSleep = spawnAs(ctx.bob, ['sleep', '600']);
  const aliceSleep = spawnAs(ctx.alice, ['sleep', '600']);
  ctx.pids.push(rootSleep.pid!, bobSleep.pid!, aliceSleep.pid!);
  await waitFor(() => fs.readFileSync(`/proc/${bobSleep.pid}/comm`, 'utf8').trim() === 'sleep' && fs.readFileSync(`/proc/${aliceSleep.pid}/comm`, 'utf8').trim() === 'sleep', 5000, 'the sleeps to exec');
  const rootWas = cgroupOf(rootSleep.pid!);
  const bobWas = cgroupOf(bobSleep.pid!);
  // Nor whose it is: under hidepid the agent's answer must not name the owner of a process the user cannot see.
  refused(t, attach(ctx.alice, rootSleep.pid!), notHers(rootSleep.pid!));
  refused(t, attach(ctx.alice, bobSleep.pid!), notHers(bobSleep.pid!));
  t.is(cgroupOf(rootSleep.pid!), rootWas);
  t.is(cgroupOf(bobSleep.pid!), bobWas);
  const ok = attach(ctx.alice, aliceSleep.pid!);
  t.is(ok.code, 0, ok.stderr);
  t.true(cgroupOf(aliceSleep.pid!).endsWith('/job_601/step_0/user/task_0'));
});

test("several tasks in one task.place: one process that is not the user's refuses them all, and none moves", async (t) => {
  const bobSleep = spawnAs(ctx.bob, ['sleep', '600']);
  const mine = [spawnAs(ctx.alice, ['sleep', '600']), spawnAs(ctx.alice, ['sleep', '600'])];
  ctx.pids.push(bobSleep.pid!, ...mine.map((p) => p.pid!));
  await waitFor(() => [bobSleep, ...mine].every((p) => fs.readFileSync(`/proc/${p.pid}/comm`, 'utf8').trim() === 'sleep'), 5000, 'the sleeps to exec');
  const was = [bobSleep, ...mine].map((p) => cgroupOf(p.pid!));
  const tasks = [{ task: 0, pid: mine[0].pid! }, { task: 1, pid: bobSleep.pid! }, { task: 2, pid: mine[1].pid! }];
  const [bad] = requestsAs(ctx.alice, ctx.agent.socket, [['task.place', { job: 601, step: 0, tasks }]]);
  t.is(bad.error?.code, 'EPERM');
  t.regex(bad.error?.message ?? '', notHers(bobSleep.pid!));
  t.deepEqual([bobSleep, ...mine].map((p) => cgroupOf(p.pid!)), was, 'nothing moved');
  const [good] = requestsAs(ctx.alice, ctx.agent.socket, [['task.place', { job: 601, step: 0, tasks: [tasks[0], tasks[2]] }]]);
  t.true(good.ok, good.error?.message);
  t.is(cgroupOf(bobSleep.pid!), was[0]);
  t.true(cgroupOf(mine[0].pid!).endsWith('/job_601/step_0/user/task_0'));
  t.true(cgroupOf(mine[1].pid!).endsWith('/job_601/step_0/user/task_2'));
});

test("a thread id of the user's own process is refused: the whole process would move", async (t) => {
  const n = spawnAs(ctx.alice, [process.execPath, '-e', 'setInterval(() => {}, 1000)']);
  ctx.pids.push(n.pid!);
  const [tid] = await threadsOf(n.pid!);
  const was = cgroupOf(n.pid!);
  refused(t, attach(ctx.alice, tid), new RegExp(`is a thread of process ${n.pid}`));
  t.is(cgroupOf(n.pid!), was);
});

test("a process in root's job cannot be pulled into the user's own job (out of root's limits)", async (t) => {
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  await c.request('step.create', { job: 602, step: 0 });
  const s = spawnAs(ctx.alice, ['sleep', '600']);
  ctx.pids.push(s.pid!);
  await waitFor(() => fs.readFileSync(`/proc/${s.pid}/comm`, 'utf8').trim() === 'sleep', 5000, 'sleep to exec');
  await c.request('attach', { job: 602, step: 0, pid: s.pid!, task: 0 });
  refused(t, attach(ctx.alice, s.pid!), /is in job 602/);
  t.true(cgroupOf(s.pid!).endsWith('/job_602/step_0/user/task_0'));
  // Nor to another leaf of root's job (out of what root set on task_0) ...
  refused(t, cgstepAs(ctx.alice, ctx.agent.socket, ['attach', '602', '0', String(s.pid), '--task', '1']), /is in job 602 \(job_602\/step_0\/user\/task_0\); .* only from outside every job/);
  // ... nor may she act on root's job itself, with a process of hers from outside every job.
  const fresh = spawnAs(ctx.alice, ['sleep', '600']);
  ctx.pids.push(fresh.pid!);
  await waitFor(() => fs.readFileSync(`/proc/${fresh.pid}/comm`, 'utf8').trim() === 'sleep', 5000, 'sleep to exec');
  refused(t, cgstepAs(ctx.alice, ctx.agent.socket, ['attach', '602', '0', String(fresh.pid), '--task', '1']), /job 602 belongs to uid 0/);
});

test("a user cannot move its task out of the leaf it was placed in, nor into the step daemon's slurm/ leaf", async (t) => {
  // Root gives alice job 604, whose step 0 denies /dev/zero; her task is placed from outside every job.
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  await c.request('job.create', { job: 604, owner: ctx.alice.uid });
  await c.request('step.create', { job: 604, step: 0, devices: { deny: ['c 1:5 rwm'] } });
  const s = spawnAs(ctx.alice, ['sleep', '600']);
  ctx.pids.push(s.pid!);
  await waitFor(() => fs.readFileSync(`/proc/${s.pid}/comm`, 'utf8').trim() === 'sleep', 5000, 'sleep to exec');
  const [placed] = requestsAs(ctx.alice, ctx.agent.socket, [['attach', { job: 604, step: 0, pid: s.pid!, task: 1 }]]);
  t.true(placed.ok, JSON.stringify(placed.error));
  const home = cgroupOf(s.pid!);
  t.true(home.endsWith('/job_604/step_0/user/task_1'), home);
  const tries = requestsAs(ctx.alice, ctx.agent.socket, [
    ['attach', { job: 604, step: 0, pid: s.pid!, leaf: 'slurm' }],
    ['task.place', { job: 604, step: 0, pid: s.pid!, leaf: 'slurm' }],
    ['attach', { job: 604, step: 0, pid: s.pid!, task: 2 }],
    ['task.place', { job: 604, step: 1, pid: s.pid!, task: 0 }],
  ]);
  for (const r of tries) t.is(r.error?.code, 'EPERM', JSON.stringify(r));
  t.regex(tries[0].error!.message, /slurm\/\) is for root or an operator/);
  t.regex(tries[2].error!.message, /is in job 604 \(job_604\/step_0\/user\/task_1\)/);
  t.is(cgroupOf(s.pid!), home, 'the task stayed where root confined it');
  t.false(fs.existsSync(path.join(ctx.root, 'system.slice/slurmstepd.scope', 'job_604', 'step_1')), 'the refused task.place made no step');
  t.false(fs.existsSync(path.join(ctx.root, 'system.slice/slurmstepd.scope', 'job_604', 'step_0', 'user', 'task_2')), 'nor a leaf');
  // Placing it again where it is changes nothing, and is not refused.
  const [again] = requestsAs(ctx.alice, ctx.agent.socket, [['attach', { job: 604, step: 0, pid: s.pid!, task: 1 }]]);
  t.true(again.ok, JSON.stringify(again.error));
  await c.request('destroy', { job: 604, force: true });
});

test("a user's signal and forced destroy kill only its own processes: root's step daemon and helpers in its job refuse them", async (t) => {
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  await c.request('job.create', { job: 605, owner: ctx.alice.uid });
  await c.request('step.create', { job: 605, step: 0 });
  const daemon = spawnSleeper(); // root's, as slurmstepd is
  ctx.pids.push(daemon.pid!);
  await c.request('attach', { job: 605, step: 0, pid: daemon.pid!, leaf: 'slurm' });
  const hers = spawnAs(ctx.alice, ['sleep', '600']);
  ctx.pids.push(hers.pid!);
  await waitFor(() => fs.readFileSync(`/proc/${hers.pid}/comm`, 'utf8').trim() === 'sleep', 5000, 'sleep to exec');
  const [placed] = requestsAs(ctx.alice, ctx.agent.socket, [['attach', { job: 605, step: 0, pid: hers.pid!, task: 0 }]]);
  t.true(placed.ok, JSON.stringify(placed.error));
  // Her forced destroy would kill the step daemon: refused, nothing killed.
  const [destroy] = requestsAs(ctx.alice, ctx.agent.socket, [['destroy', { job: 605, force: true }]]);
  t.is(destroy.error?.code, 'EPERM', JSON.stringify(destroy));
  t.regex(destroy.error!.message, new RegExp(`^pid ${daemon.pid} in the job is not a process of uid ${ctx.alice.uid} \\(neither its real nor its saved uid\\)`));
  t.notRegex(destroy.error!.message, /uid 0/);
  t.is(daemon.exitCode ?? daemon.signalCode, null, "root's process is alive");
  t.is(hers.exitCode ?? hers.signalCode, null, 'hers too: nothing was killed');
  // Signals reach user/ only: her own process there is hers to signal.
  const [stop] = requestsAs(ctx.alice, ctx.agent.socket, [['signal', { job: 605, step: 0, signal: 'CONT' }]]);
  t.true(stop.ok, JSON.stringify(stop.error));
  // A root helper placed in user/ is not hers: the signal is refused before any is sent.
  const helper = spawnSleeper();
  ctx.pids.push(helper.pid!);
  await c.request('attach', { job: 605, step: 0, pid: helper.pid!, task: 1 });
  const [term] = requestsAs(ctx.alice, ctx.agent.socket, [['signal', { job: 605, step: 0, signal: 'TERM' }]]);
  t.is(term.error?.code, 'EPERM', JSON.stringify(term));
  await new Promise((r) => setTimeout(r, 100));
  t.is(hers.exitCode ?? hers.signalCode, null, 'no signal went out');
  t.is(helper.exitCode ?? helper.signalCode, null);
  // Root may.
  t.is((await c.request('destroy', { job: 605, force: true })).killed, 3);
});

/** As u: send these request lines in one write on one connection, print the replies as a JSON array. */
const PIPELINED = `
const net = require('node:net');
const [socket, lines] = process.argv.slice(1);
const want = JSON.parse(lines);
const s = net.connect(socket);
let buf = '';
const done = () => { console.log(JSON.stringify(buf.split('\\n').filter(Boolean).map((l) => JSON.parse(l)))); s.destroy(); };
s.on('data', (d) => {
  buf += d;
  if (buf.endsWith('\\n') && buf.split('\\n').filter(Boolean).length >= want.length) done();
});
s.on('error', (e) => { console.error(String(e)); process.exit(1); });
s.on('end', done);
s.write(want.map((r) => JSON.stringify(r)).join('\\n') + '\\n');`;

test.serial("the move rule is checked again inside the job's lock: two placements of one process sent together move it once", async (t) => {
  const s = spawnAs(ctx.alice, ['sleep', '600']);
  ctx.pids.push(s.pid!);
  await waitFor(() => fs.readFileSync(`/proc/${s.pid}/comm`, 'utf8').trim() === 'sleep', 5000, 'sleep to exec');
  // Both are admitted while the process is outside every job; the second finds it in the first's job.
  const out = JSON.parse(
    await nodeOutputAs(ctx.alice, [], PIPELINED, [ctx.agent.socket, JSON.stringify([
      { id: 1, op: 'task.place', job: 606, step: 0, pid: s.pid, task: 0 },
      { id: 2, op: 'task.place', job: 607, step: 0, pid: s.pid, task: 0 },
    ])]),
  ) as { id: number; ok: boolean; error?: { code: string; message: string } }[];
  const byId = new Map(out.map((r) => [r.id, r]));
  t.true(byId.get(1)!.ok, JSON.stringify(byId.get(1)));
  t.is(byId.get(2)!.error?.code, 'EPERM', JSON.stringify(byId.get(2)));
  t.regex(byId.get(2)!.error!.message, /is in job 606 \(job_606\/step_0\/user\/task_0\)/);
  t.true(cgroupOf(s.pid!).endsWith('/job_606/step_0/user/task_0'));
  t.false(fs.existsSync(path.join(ctx.root, 'system.slice/slurmstepd.scope', 'job_607')), 'the refused placement left nothing');
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  await c.request('destroy', { job: 606, force: true });
});

test.serial("a user's freeze reaches only its own processes, and a step root froze (a suspend) stays frozen until root thaws it", async (t) => {
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  await c.request('job.create', { job: 608, owner: ctx.alice.uid });
  await c.request('step.create', { job: 608, step: 0 });
  const hers = spawnAs(ctx.alice, ['sleep', '600']);
  ctx.pids.push(hers.pid!);
  await waitFor(() => fs.readFileSync(`/proc/${hers.pid}/comm`, 'utf8').trim() === 'sleep', 5000, 'sleep to exec');
  t.true(requestsAs(ctx.alice, ctx.agent.socket, [['attach', { job: 608, step: 0, pid: hers.pid!, task: 0 }]])[0].ok);
  const frozen = () => fs.readFileSync(path.join(ctx.root, 'system.slice/slurmstepd.scope/job_608/step_0/user/cgroup.freeze'), 'utf8').trim() === '1';
  // Her own freeze and thaw.
  const [f1, t1] = requestsAs(ctx.alice, ctx.agent.socket, [['freeze', { job: 608, step: 0 }], ['thaw', { job: 608, step: 0 }]]);
  t.true(f1.ok && t1.ok, JSON.stringify([f1, t1]));
  // Root's suspend: she may not undo it.
  await c.request('freeze', { job: 608, step: 0 });
  const [undo] = requestsAs(ctx.alice, ctx.agent.socket, [['thaw', { job: 608 }]]);
  t.is(undo.error?.code, 'EPERM', JSON.stringify(undo));
  t.regex(undo.error!.message, /frozen by root or an operator/);
  t.true(frozen());
  await c.request('thaw', { job: 608, step: 0 });
  t.false(frozen());
  // A root helper in the step: her freeze would stop it too.
  const helper = spawnSleeper();
  ctx.pids.push(helper.pid!);
  await c.request('attach', { job: 608, step: 0, pid: helper.pid!, task: 1 });
  const [f2] = requestsAs(ctx.alice, ctx.agent.socket, [['freeze', { job: 608, step: 0 }]]);
  t.is(f2.error?.code, 'EPERM', JSON.stringify(f2));
  t.false(frozen());
  await c.request('destroy', { job: 608, force: true });
});
