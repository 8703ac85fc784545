/**
 * Job-id squatting: an allowed uid made a job (or placed a task) under an id
 * Slurm would later use, and root's job.create / task.place naming the Slurm
 * job's owner for that id was refused, so any user could fail future jobs
 * closed. Now an admin naming the owner is authoritative over a user's own
 * claim: the squatter's processes are killed, its tree removed and the job
 * made afresh for the named owner (that same user too). A job root made (for
 * itself or for a user) is not a claim and cannot be taken that way. Real uids through setpriv, a
 * real agent.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { getXattr } from '../../src/cgroupfs/index.js';
import { cgstepAs, requestsAs, sleepAs, type TestUser, withTwoUsers } from '../helpers/users.js';
import { cgroupOf } from './helpers.js';

const ctx = withTwoUsers(test, 'squat', ['--ignore-missing-controllers']);

const jobDir = (job: number) => path.join(ctx.root, 'system.slice/slurmstepd.scope', `job_${job}`);
const owner = (job: number) => getXattr(jobDir(job), 'trusted.cgstep.owner')?.toString() ?? null;

const sleeper = (u: TestUser) => sleepAs(u, ctx.pids);

const takenBack = (job: number) => ctx.agent.logLines().filter((l) => l.msg?.startsWith('job id taken back') && l.job === String(job));

test.serial("root's job.create for alice takes back an id bob made and placed a process in", async (t) => {
  const bobs = await sleeper(ctx.bob);
  const squat = requestsAs(ctx.bob, ctx.agent.socket, [
    ['job.create', { job: 901 }],
    ['step.create', { job: 901, step: 0 }],
    ['attach', { job: 901, step: 0, pid: bobs.pid, task: 0 }],
  ]);
  for (const o of squat) t.true(o.ok, JSON.stringify(o.error));
  t.is(owner(901), String(ctx.bob.uid));

  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  const r = await c.request('job.create', { job: 901, owner: ctx.alice.uid });
  t.true(r.created, 'made afresh for alice');
  t.is(await bobs.exited, 'SIGKILL', "bob's process in the squatted job is killed");
  t.is(owner(901), String(ctx.alice.uid));
  t.is(getXattr(jobDir(901), 'trusted.cgstep.made-by'), null, 'root made it now');
  t.false(fs.existsSync(path.join(jobDir(901), 'step_0')), "bob's steps are gone");
  const [warn] = takenBack(901);
  t.is(warn?.level, 40, 'logged at warn');
  t.is(warn?.claimedBy, ctx.bob.uid);
  t.is(warn?.owner, ctx.alice.uid);
  t.deepEqual(warn?.killed, [bobs.pid]);
  // bob no longer reaches it; alice does.
  const bob = cgstepAs(ctx.bob, ctx.agent.socket, ['step', 'create', '901', '1']);
  t.is(bob.error?.code, 'EPERM', bob.stderr);
  t.regex(bob.error!.message, new RegExp(`job 901 belongs to uid ${ctx.alice.uid}`));
  t.is(cgstepAs(ctx.alice, ctx.agent.socket, ['step', 'create', '901', '0']).code, 0);
  // The same request again (the plugin names the owner every time) changes nothing.
  t.false((await c.request('job.create', { job: 901, owner: ctx.alice.uid })).created);
  t.is(takenBack(901).length, 1);
  await c.request('destroy', { job: 901, force: true });
});

test.serial("a take-back request refused for its own content (gres the node lacks) kills nothing and removes nothing", async (t) => {
  const bobs = await sleeper(ctx.bob);
  const [squat] = requestsAs(ctx.bob, ctx.agent.socket, [['task.place', { job: 906, step: 0, pid: bobs.pid, task: 0 }]]);
  t.true(squat.ok, JSON.stringify(squat.error));
  const alices = await sleeper(ctx.alice);
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  // Both requests would take the id back, and both are refused by their planning (no gres on this node).
  const byCreate = await t.throwsAsync(c.request('job.create', { job: 906, owner: ctx.alice.uid, devices: { gres: ['gpu:1'] } }));
  t.is((byCreate as any).code, 'EINVAL', byCreate?.message);
  const byPlace = await t.throwsAsync(c.request('task.place', { job: 906, step: 0, pid: alices.pid, task: 0, owner: ctx.alice.uid, stepDevices: { gres: ['gpu:1'] } }));
  t.is((byPlace as any).code, 'EINVAL', byPlace?.message);
  t.deepEqual(takenBack(906), [], 'nothing was taken back');
  t.true(fs.readFileSync(`/proc/${bobs.pid}/stat`, 'utf8').split(' ')[2] !== 'Z', "bob's process lives");
  t.true(cgroupOf(bobs.pid).endsWith('/job_906/step_0/user/task_0'), "and stays in bob's job");
  t.is(owner(906), String(ctx.bob.uid), "the job is still bob's");
  t.false(cgroupOf(alices.pid).includes('/job_906/'), "alice's process was not moved");
  // The same request without the refused part takes the id back as before.
  await c.request('job.create', { job: 906, owner: ctx.alice.uid });
  t.is(await bobs.exited, 'SIGKILL');
  t.is(takenBack(906).length, 1);
  await c.request('destroy', { job: 906, force: true });
});

test.serial("a take-back that would place a process from inside what it takes back is refused before anything is killed", async (t) => {
  const bobs = await sleeper(ctx.bob);
  const [squat] = requestsAs(ctx.bob, ctx.agent.socket, [['task.place', { job: 907, step: 0, pid: bobs.pid, task: 0 }]]);
  t.true(squat.ok, JSON.stringify(squat.error));
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  // Killing the job's processes first would kill the very process the request moves.
  const err = await t.throwsAsync(c.request('task.place', { job: 907, step: 0, pid: bobs.pid, leaf: 'slurm', owner: ctx.bob.uid }));
  t.is((err as any).code, 'EBUSY', err?.message);
  t.regex(err!.message, /process \d+ is in job 907, which this request would take back/);
  t.deepEqual(takenBack(907), []);
  t.true(cgroupOf(bobs.pid).endsWith('/job_907/step_0/user/task_0'), "bob's process lives where it was");
  await c.request('destroy', { job: 907, force: true });
});

test.serial("root's task.place for alice takes back an id bob claimed with task.place; her task runs in it", async (t) => {
  const bobs = await sleeper(ctx.bob);
  const [squat] = requestsAs(ctx.bob, ctx.agent.socket, [['task.place', { job: 902, step: 0, pid: bobs.pid, task: 0 }]]);
  t.true(squat.ok, JSON.stringify(squat.error));
  const alices = await sleeper(ctx.alice);
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  const r = await c.request('task.place', { job: 902, step: 0, pid: alices.pid, task: 0, owner: ctx.alice.uid });
  t.true(r.job.created);
  t.is(await bobs.exited, 'SIGKILL');
  t.true(cgroupOf(alices.pid).endsWith('/job_902/step_0/user/task_0'));
  t.is(owner(902), String(ctx.alice.uid));
  await c.request('destroy', { job: 902, force: true });
  t.is(await alices.exited, 'SIGKILL');
});

test.serial('jobs root made are no claim: a user cannot take them, and root naming another owner for a job it gave is refused', async (t) => {
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  // Root's own job: bob can neither create it again nor place into it, and nothing in it is harmed.
  const roots = await sleeper(ctx.alice); // any process: root places it
  await c.request('task.place', { job: 903, step: 0, pid: roots.pid, task: 0 });
  const bobs = await sleeper(ctx.bob);
  const tries = requestsAs(ctx.bob, ctx.agent.socket, [
    ['job.create', { job: 903 }],
    ['task.place', { job: 903, step: 1, pid: bobs.pid, task: 0 }],
  ]);
  for (const o of tries) {
    t.is(o.error?.code, 'EPERM');
    t.regex(o.error?.message ?? '', /job 903 belongs to uid 0/);
  }
  t.is(owner(903), null);
  t.true(cgroupOf(roots.pid).endsWith('/job_903/step_0/user/task_0'), "root's task is untouched");
  // A job root gave to alice is not taken for bob: the controller contradicts itself.
  await c.request('job.create', { job: 904, owner: ctx.alice.uid });
  const e: any = await t.throwsAsync(c.request('job.create', { job: 904, owner: ctx.bob.uid }));
  t.is(e.code, 'EPERM');
  t.regex(e.message, new RegExp(`job 904 already belongs to uid ${ctx.alice.uid}, given by root or an operator`));
  t.is(owner(904), String(ctx.alice.uid));
  t.is(takenBack(903).length + takenBack(904).length, 0);
  // bob's own claim is taken back even when root names bob: the job root gives him is made as root asks (see preclaim.test.ts).
  t.true(requestsAs(ctx.bob, ctx.agent.socket, [['task.place', { job: 905, step: 0, pid: bobs.pid, task: 0 }]])[0].ok);
  t.true((await c.request('job.create', { job: 905, owner: ctx.bob.uid })).created);
  t.is(await bobs.exited, 'SIGKILL');
  t.is(owner(905), String(ctx.bob.uid));
  t.is(takenBack(905).length, 1);
  for (const job of [903, 904, 905]) await c.request('destroy', { job, force: true });
});
