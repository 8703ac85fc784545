/**
 * A user knows its job id before the job starts on the node. It made the job
 * (or the next step of it) first, and root's task.place for that same user
 * then used the user's levels as they were: the job's and step's device deny
 * rules root asked for were dropped, and the task opened /dev/zero and
 * /dev/full. Now an admin's request naming the owner takes back a job or step
 * the user made for itself, even for that same user, and makes it afresh as
 * asked; a step root made is used as it is, so its next task's placement
 * changes nothing. The proof is the kernel's: real opens by the user's
 * process, placed by root as slurmstepd places a task.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { getXattr } from '../../src/cgroupfs/index.js';
import { gate } from '../helpers/gate.js';
import readline from 'node:readline';
import { requestsAs, sleepAs, spawnAs, type TestUser, withTwoUsers } from '../helpers/users.js';
import { kernelSkipReason } from '../devices/helpers.js';
import { cgroupOf } from './helpers.js';

const skip = kernelSkipReason();
const kt = gate('BPF device control', { ok: !skip, reason: skip }, import.meta.url).test;

const ctx = withTwoUsers(test, 'preclaim', ['--ignore-missing-controllers']);

const scope = () => path.join(ctx.root, 'system.slice/slurmstepd.scope');
const madeBy = (rel: string) => getXattr(path.join(scope(), rel), 'trusted.cgstep.made-by')?.toString() ?? null;
const takenBack = (what: 'job' | 'step', job: number) => ctx.agent.logLines().filter((l) => l.msg?.startsWith(`${what} id taken back`) && l.job === String(job));
const ZERO = 'c 1:5 rwm';
const FULL = 'c 1:7 rwm';

/** Node, as a task: for each device path on stdin, what its open for reading returns ("OK" or the errno name). */
const OPENER = `
const fs = require('node:fs');
require('node:readline').createInterface({ input: process.stdin }).on('line', (p) => {
  let r = 'OK';
  try { fs.closeSync(fs.openSync(p, 'r')); } catch (e) { r = e.code; }
  process.stdout.write(r + '\\n');
});
process.stdout.write('ready\\n');
`;

interface Opener { pid: number; open(dev: string): Promise<string> }

/** A process of u's that reports what its opens return (the task root places); ended by the file's teardown, by pid. */
async function proberOf(u: TestUser): Promise<Opener> {
  const p = spawnAs(u, [process.execPath, '-e', OPENER], { stdio: ['pipe', 'pipe', 'inherit'] });
  ctx.pids.push(p.pid!);
  const lines = readline.createInterface({ input: p.stdout! })[Symbol.asyncIterator]();
  const next = async () => {
    const l = await Promise.race([lines.next(), new Promise<never>((_r, reject) => setTimeout(() => reject(new Error(`opener ${p.pid}: no answer`)), 10_000).unref())]);
    if (l.done) throw new Error(`opener ${p.pid} ended`);
    return l.value;
  };
  if ((await next()) !== 'ready') throw new Error(`opener ${p.pid} did not start`);
  return {
    pid: p.pid!,
    open: (dev) => {
      p.stdin!.write(dev + '\n');
      return next();
    },
  };
}

const sleeper = (u: TestUser) => sleepAs(u, ctx.pids);

const alive = (pid: number) => fs.existsSync(`/proc/${pid}`) && fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(' ')[2] !== 'Z';

kt("a job the user made for itself is taken back when root names that same user: root's job and step deny rules are in force", async (t) => {
  const hers = await sleeper(ctx.alice);
  const claim = requestsAs(ctx.alice, ctx.agent.socket, [['task.place', { job: 911, step: 0, pid: hers.pid, task: 0 }]]);
  t.true(claim[0].ok, JSON.stringify(claim[0].error));
  t.is(madeBy('job_911'), String(ctx.alice.uid));
  const task = await proberOf(ctx.alice);
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  const place = { job: 911, step: 0, owner: ctx.alice.uid, jobDevices: { deny: [FULL] }, stepDevices: { deny: [ZERO] } };
  const r = await c.request('task.place', { ...place, pid: task.pid, task: 0 });
  t.true(r.job.created, 'the job is made afresh');
  t.true(r.step.created, 'and its step');
  t.is(await hers.exited, 'SIGKILL', "the user's process in the claimed job is killed");
  t.is(madeBy('job_911'), null, 'root made it now');
  t.is(takenBack('job', 911).length, 1);
  t.true(cgroupOf(task.pid).endsWith('/job_911/step_0/user/task_0'));
  t.is(await task.open('/dev/full'), 'EPERM', "the job's deny is in force");
  t.is(await task.open('/dev/zero'), 'EPERM', "the step's deny is in force");
  t.is(await task.open('/dev/null'), 'OK');
  // Slurm places the step's next task with the same request: nothing is taken back or made again.
  const second = await proberOf(ctx.alice);
  const again = await c.request('task.place', { ...place, pid: second.pid, task: 1 });
  t.false(again.job.created);
  t.false(again.step.created);
  t.is(takenBack('job', 911).length, 1);
  t.true(alive(task.pid) && cgroupOf(task.pid).endsWith('/job_911/step_0/user/task_0'), 'the first task is untouched');
  t.is(await second.open('/dev/zero'), 'EPERM');
  await c.request('destroy', { job: 911, force: true });
});

kt("a step the user made for itself in root's job is taken back when root places into it: root's step deny is in force", async (t) => {
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  await c.request('job.create', { job: 912, owner: ctx.alice.uid });
  // Before Slurm's next srun, she makes step 1 with no rules of her own and puts a process in it.
  const hers = await sleeper(ctx.alice);
  const claim = requestsAs(ctx.alice, ctx.agent.socket, [
    ['step.create', { job: 912, step: 1 }],
    ['attach', { job: 912, step: 1, pid: hers.pid, task: 0 }],
  ]);
  for (const o of claim) t.true(o.ok, JSON.stringify(o.error));
  t.is(madeBy('job_912/step_1'), String(ctx.alice.uid));
  const task = await proberOf(ctx.alice);
  const r = await c.request('task.place', { job: 912, step: 1, pid: task.pid, task: 0, owner: ctx.alice.uid, stepDevices: { deny: [ZERO] } });
  t.false(r.job.created, "root's job is kept");
  t.true(r.step.created, 'the step is made afresh');
  t.is(await hers.exited, 'SIGKILL', "the user's process in the claimed step is killed");
  t.is(madeBy('job_912/step_1'), null, 'root made it now');
  const [warn] = takenBack('step', 912);
  t.is(warn?.level, 40, 'logged at warn');
  t.is(warn?.step, '1');
  t.deepEqual(warn?.killed, [hers.pid]);
  t.is(takenBack('job', 912).length, 0);
  t.is(await task.open('/dev/zero'), 'EPERM', "the step's deny is in force");
  t.is(await task.open('/dev/null'), 'OK');
  await c.request('destroy', { job: 912, force: true });
});

kt("root's second task placement into a step root made changes nothing: no take-back, the same program, the first task untouched", async (t) => {
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  const place = { job: 913, step: 0, owner: ctx.alice.uid, stepDevices: { deny: [ZERO] } };
  const first = await proberOf(ctx.alice);
  const r = await c.request('task.place', { ...place, pid: first.pid, task: 0 });
  t.true(r.step.created);
  const program = (await c.request('stats', { job: 913, step: 0 })).steps[0].devices;
  t.truthy(program, 'the step has its own device program');
  const second = await proberOf(ctx.alice);
  const again = await c.request('task.place', { ...place, pid: second.pid, task: 1 });
  t.false(again.step.created);
  t.deepEqual((await c.request('stats', { job: 913, step: 0 })).steps[0].devices, program, 'the step policy is the same one');
  t.is(takenBack('step', 913).length + takenBack('job', 913).length, 0);
  t.true(alive(first.pid) && cgroupOf(first.pid).endsWith('/job_913/step_0/user/task_0'));
  t.true(cgroupOf(second.pid).endsWith('/job_913/step_0/user/task_1'));
  for (const p of [first, second]) t.is(await p.open('/dev/zero'), 'EPERM');
  await c.request('destroy', { job: 913, force: true });
});

kt('a step take-back refused for its own content (gres the node lacks) kills nothing and removes nothing', async (t) => {
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  await c.request('job.create', { job: 914, owner: ctx.alice.uid });
  const hers = await sleeper(ctx.alice);
  const [claim] = requestsAs(ctx.alice, ctx.agent.socket, [['task.place', { job: 914, step: 1, pid: hers.pid, task: 0 }]]);
  t.true(claim.ok, JSON.stringify(claim.error));
  const task = await proberOf(ctx.alice);
  const e: any = await t.throwsAsync(c.request('task.place', { job: 914, step: 1, pid: task.pid, task: 0, owner: ctx.alice.uid, stepDevices: { gres: ['gpu:1'] } }));
  t.is(e.code, 'EINVAL', e.message);
  t.is(takenBack('step', 914).length, 0, 'nothing was taken back');
  t.true(alive(hers.pid), "the user's process lives");
  t.true(cgroupOf(hers.pid).endsWith('/job_914/step_1/user/task_0'), 'in its step');
  t.is(madeBy('job_914/step_1'), String(ctx.alice.uid), 'which is still her claim');
  t.false(cgroupOf(task.pid).includes('/job_914/'), 'the task was not moved');
  await c.request('destroy', { job: 914, force: true });
});
