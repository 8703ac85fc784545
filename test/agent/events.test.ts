/**
 * Event delivery from a real agent on the real kernel: frozen/thawed for
 * every freeze request that changed a step, however quickly a thaw follows
 * (the kernel's notices coalesce then), and empties that reach every
 * subscriber while nothing else happens in the agent, and empties a destroy
 * publishes itself (once each, in order) when the kernel's notices of them
 * have not been handled yet.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { makeTestRoot, removeTestRoot } from '../helpers/cgroup.js';
import { killPid, sleep, sleepersOfOneShell, spawnSleeper, startAgent, waitFor, type RunningAgent } from '../helpers/agent.js';

const ctx: { root: string; agent: RunningAgent } = {} as any;

test.before(async () => {
  ctx.root = makeTestRoot('events');
  ctx.agent = await startAgent({ root: ctx.root, args: ['--ignore-systemd'] });
});

test.after.always(async () => {
  await ctx.agent?.stop();
  await removeTestRoot(ctx.root);
});

/** A subscribed connection and what it has heard, as "event job step task". */
async function subscriber(t: { teardown: (f: () => void) => void }) {
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  const heard: string[] = [];
  await c.events((e) => heard.push([e.event, e.job, e.step, e.task].filter((x) => x !== undefined).join(' ')));
  return heard;
}

test.serial('freeze and thaw back to back: each request publishes frozen/thawed for every step it changed, and a repeated one nothing', async (t) => {
  const heard = await subscriber(t);
  const c = await ctx.agent.client();
  const procs = [spawnSleeper(), spawnSleeper()];
  t.teardown(async () => {
    for (const p of procs) killPid(p.pid);
    await c.request('destroy', { job: '81', force: true }).catch(() => undefined);
    c.close();
  });
  for (const [i, p] of procs.entries()) await c.request('task.place', { job: '81', step: String(i), pid: p.pid!, task: 0 });
  // No pause between the requests: the notice of frozen 1 is often read only after the thaw.
  const rounds = 8;
  for (let i = 0; i < rounds; i++) {
    await c.request('freeze', { job: '81', step: '0' });
    await c.request('thaw', { job: '81', step: '0' });
  }
  await c.request('freeze', { job: '81' });
  await c.request('freeze', { job: '81', step: '1' }); // already frozen: no event
  await c.request('thaw', { job: '81' });
  await c.request('thaw', { job: '81' }); // already thawed: no event
  const want0 = [...Array.from({ length: rounds }, () => ['frozen 81 0', 'thawed 81 0']).flat(), 'frozen 81 0', 'thawed 81 0'];
  const want1 = ['frozen 81 1', 'thawed 81 1'];
  const of = (step: string) => heard.filter((h) => h.split(' ')[2] === step);
  await waitFor(() => of('0').length >= want0.length && of('1').length >= want1.length, 5000, 'the frozen and thawed events');
  t.deepEqual(of('0'), want0);
  t.deepEqual(of('1'), want1);
});

test.serial('empties reach every subscriber while nothing else happens in the agent, in task -> step -> job order', async (t) => {
  const subs = [await subscriber(t), await subscriber(t), await subscriber(t)];
  const c = await ctx.agent.client();
  const jobs = ['91', '92', '93', '94', '95', '96'];
  const procs = jobs.map(() => spawnSleeper());
  t.teardown(async () => {
    for (const p of procs) killPid(p.pid);
    for (const job of jobs) await c.request('destroy', { job, force: true }).catch(() => undefined);
    c.close();
  });
  for (const [i, job] of jobs.entries()) await c.request('task.place', { job, step: '0', pid: procs[i].pid!, task: 0 });
  // The agent is idle from here: only the kernel's notices can make it publish.
  for (const p of procs) killPid(p.pid);
  await waitFor(() => subs.every((heard) => jobs.every((job) => heard.includes(`job.empty ${job}`))), 5000, 'every job.empty on every subscriber');
  for (const heard of subs) {
    for (const job of jobs) t.deepEqual(heard.filter((h) => h.split(' ')[1] === job), [`task.empty ${job} 0 0`, `step.empty ${job} 0`, `job.empty ${job}`]);
  }
});

/** A node process that exits the moment it finds itself in a cgroup whose path ends with `tail`. */
function exitsWhenIn(tail: string) {
  const script = "const fs = require('fs'); const t = process.argv[1]; while (!fs.readFileSync('/proc/self/cgroup', 'utf8').trim().endsWith(t)); process.kill(process.pid, 'SIGKILL');";
  return spawn(process.execPath, ['-e', script, tail], { stdio: 'ignore' });
}

test.serial('a process that ends the moment it is placed still makes its empties, in a new leaf and in one emptied before', async (t) => {
  const heard = await subscriber(t);
  const c = await ctx.agent.client();
  const procs = [spawnSleeper(), exitsWhenIn('/job_97/step_0/user/task_0'), exitsWhenIn('/job_97/step_0/user/task_1')];
  t.teardown(async () => {
    for (const p of procs) killPid(p.pid);
    await c.request('destroy', { job: '97', force: true }).catch(() => undefined);
    c.close();
  });
  const empties = (n: number) => waitFor(() => heard.filter((h) => h === 'job.empty 97').length >= n, 5000, `job.empty 97 #${n}`);
  // task_0 made and emptied once.
  await c.request('task.place', { job: '97', step: '0', pid: procs[0].pid!, task: 0 });
  killPid(procs[0].pid);
  await empties(1);
  // Both loop reading their cgroup by now (node has started), so each ends within microseconds of its move.
  await sleep(500);
  await c.request('task.place', { job: '97', step: '0', pid: procs[1].pid!, task: 0 }); // the leaf emptied before
  await empties(2);
  await c.request('task.place', { job: '97', step: '0', pid: procs[2].pid!, task: 1 }); // a new leaf
  await empties(3);
  const want = (task: string) => [`task.empty 97 0 ${task}`, 'step.empty 97 0', 'job.empty 97'];
  t.deepEqual(heard, [...want('0'), ...want('0'), ...want('1')]);
});

test.serial('a destroy right after the processes left publishes each empty once, task -> step -> job; a forced one too; a step destroy only what it emptied', async (t) => {
  const heard = await subscriber(t);
  const c = await ctx.agent.client();
  const park = path.join(ctx.root, 'park-events'); // removed with the test root
  fs.mkdirSync(park);
  const procs = [spawnSleeper(), spawnSleeper(), spawnSleeper(), spawnSleeper()];
  t.teardown(async () => {
    for (const p of procs) killPid(p.pid);
    for (const job of ['101', '102', '103']) await c.request('destroy', { job, force: true }).catch(() => undefined);
    c.close();
  });
  const moveOut = (pid: number) => fs.writeFileSync(path.join(park, 'cgroup.procs'), String(pid));
  // The destroy's request is on the wire before the agent can have handled the move's notices.
  await c.request('task.place', { job: '101', step: '0', pid: procs[0].pid!, task: 0 });
  moveOut(procs[0].pid!);
  const r = await c.request('destroy', { job: '101' });
  t.is(r.killed, 0);
  // A forced destroy of a running task.
  await c.request('task.place', { job: '102', step: '0', pid: procs[1].pid!, task: 3 });
  t.is((await c.request('destroy', { job: '102', force: true })).killed, 1);
  // A step destroy: step 1 emptied, step 0 still running, so the job is not empty.
  await c.request('task.place', { job: '103', step: '0', pid: procs[2].pid!, task: 0 });
  await c.request('task.place', { job: '103', step: '1', pid: procs[3].pid!, task: 0 });
  moveOut(procs[3].pid!);
  await c.request('destroy', { job: '103', step: '1' });
  await waitFor(() => heard.includes('job.empty 102') && heard.includes('step.empty 103 1'), 5000, 'the destroys\' empties');
  await sleep(300); // notices the kernel sends late must not publish anything twice
  const of = (job: string) => heard.filter((h) => h.split(' ')[1] === job);
  t.deepEqual(of('101'), ['task.empty 101 0 0', 'step.empty 101 0', 'job.empty 101']);
  t.deepEqual(of('102'), ['task.empty 102 0 3', 'step.empty 102 0', 'job.empty 102']);
  t.deepEqual(of('103'), ['task.empty 103 1 0', 'step.empty 103 1']);
  const st = (await c.request('stats', { job: '103' })) as { steps: { step: string; populated: boolean }[] };
  t.deepEqual(st.steps.map((s) => [s.step, s.populated]), [['0', true]]);
});

test.serial('many subscribers at once: each hears the events of one step, and the agent warns of no listener leak', async (t) => {
  const all = await Promise.all(Array.from({ length: 24 }, () => subscriber(t)));
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  const p = spawnSleeper();
  t.teardown(() => killPid(p.pid!));
  await c.request('task.place', { job: '131', step: '0', task: 0, pid: p.pid! });
  killPid(p.pid!);
  await waitFor(() => all.every((heard) => heard.includes('job.empty 131')), 10000, 'every subscriber hears the job end');
  await c.request('destroy', { job: '131' });
  t.notRegex(ctx.agent.log(), /MaxListenersExceededWarning/);
});

test.serial('hundreds of tasks ending at once (told over several turns of the loop): every subscriber hears each empty once, tasks before their step, the step before its job', async (t) => {
  const n = 400;
  const subs = await Promise.all([subscriber(t), subscriber(t)]);
  const { shell, pids } = await sleepersOfOneShell(n);
  t.teardown(() => {
    for (const pid of pids) killPid(pid);
    killPid(shell.pid);
  });
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  await c.request('task.place', { job: '141', step: '0', tasks: pids.map((pid, task) => ({ task, pid })) });
  spawn('kill', ['-KILL', ...pids.map(String)], { stdio: 'ignore' });
  await waitFor(() => subs.every((heard) => heard.includes('job.empty 141')), 30000, 'every subscriber hears the job end');
  for (const heard of subs) {
    const mine = heard.filter((h) => / 141( |$)/.test(h));
    const tasks = mine.filter((h) => h.startsWith('task.empty'));
    t.is(tasks.length, n);
    t.is(new Set(tasks).size, n);
    t.deepEqual(mine.slice(n), ['step.empty 141 0', 'job.empty 141']);
  }
  await c.request('destroy', { job: '141' });
});
