/**
 * An admin's freeze of a job is a suspend: its owner may not thaw it, steps
 * the owner makes in it until an admin thaws the job start frozen, and a
 * refused freeze or thaw leaves the steps as they were (their cgroup.freeze
 * and the admin's marks), so a thaw that times out does not half-resume the
 * job. The agent waits 300 ms for the kernel here (--wait-timeout).
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { waitFor } from '../helpers/agent.js';
import { requestsAs, spawnAs, withTwoUsers, type TestUser } from '../helpers/users.js';

const ctx = withTwoUsers(test, 'susp', ['--wait-timeout', '300']);

const jobDir = (job: number) => path.join(ctx.root, 'system.slice/slurmstepd.scope', `job_${job}`);
const userDir = (job: number, step: number) => path.join(jobDir(job), `step_${step}`, 'user');
/** cgroup.events' frozen of a step's user/: what the kernel says, whatever was asked. */
const frozenNow = (job: number, step: number) => /^frozen 1$/m.test(fs.readFileSync(path.join(userDir(job, step), 'cgroup.events'), 'utf8'));

/** A sleeping process of u's (ended by pid after the file). */
async function sleeper(u: TestUser): Promise<number> {
  const pid = spawnAs(u, ['sleep', '600']).pid!;
  ctx.pids.push(pid);
  await waitFor(() => fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === 'sleep', 5000, 'the sleep to exec');
  return pid;
}

test.serial("a thaw that times out puts the steps' cgroup.freeze and the admin's mark back: the job stays suspended", async (t) => {
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  await c.request('task.place', { job: 10, step: 0, owner: ctx.alice.uid, pid: await sleeper(ctx.alice) });
  await c.request('freeze', { job: 10 });
  // A freeze above the step (here its job directory's, written by hand) keeps it
  // frozen whatever its own cgroup.freeze says: the thaw cannot finish.
  fs.writeFileSync(path.join(jobDir(10), 'cgroup.freeze'), '1');
  const e: any = await t.throwsAsync(c.request('thaw', { job: 10 }));
  fs.writeFileSync(path.join(jobDir(10), 'cgroup.freeze'), '0');
  t.is(e.code, 'ETIMEDOUT', e.message);
  t.regex(e.message, /timed out after 300 ms waiting for .*step_0\/user to be thawed/);
  t.is(fs.readFileSync(path.join(userDir(10, 0), 'cgroup.freeze'), 'utf8').trim(), '1', 'the step is asked frozen again');
  t.true(frozenNow(10, 0), 'and stays frozen once the freeze above it is gone');
  const [mine] = requestsAs(ctx.alice, ctx.agent.socket, [['thaw', { job: 10 }]]);
  t.is(mine.error?.code, 'EPERM', "the admin's mark is back: the owner may not thaw it");
  await c.request('step.create', { job: 10, step: 1 });
  t.true(frozenNow(10, 1), "and the job's: a step made now starts frozen");
  await c.request('thaw', { job: 10 });
  t.false(frozenNow(10, 0) || frozenNow(10, 1));
  await c.request('destroy', { job: 10, force: true });
});

test.serial("an admin's freeze of a whole job (a suspend) covers steps its owner makes afterwards, until an admin thaws the job", async (t) => {
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  await c.request('task.place', { job: 20, step: 0, owner: ctx.alice.uid, pid: await sleeper(ctx.alice) });
  await c.request('freeze', { job: 20 });
  const [placed, made, thawJob, thawStep] = requestsAs(ctx.alice, ctx.agent.socket, [
    ['task.place', { job: 20, step: 1, pid: await sleeper(ctx.alice) }],
    ['step.create', { job: 20, step: 2 }],
    ['thaw', { job: 20 }],
    ['thaw', { job: 20, step: 1 }],
  ]);
  t.true(placed.ok && made.ok, JSON.stringify([placed, made]));
  t.true(frozenNow(20, 1), "the owner's new step and the process placed in it are frozen");
  t.true(/^frozen 1$/m.test(fs.readFileSync(path.join(userDir(20, 1), 'task_0', 'cgroup.events'), 'utf8')));
  t.true(frozenNow(20, 2));
  t.is(thawJob.error?.code, 'EPERM', JSON.stringify(thawJob));
  t.is(thawStep.error?.code, 'EPERM', JSON.stringify(thawStep));
  t.deepEqual((await c.request('list', {})).jobs[0].steps.map((s: any) => s.frozen), [true, true, true]);
  // Root's thaw of the job resumes it all, and ends the suspend: a step made after it runs.
  const thawed = await c.request('thaw', { job: 20 });
  t.is(thawed.cgroups, 3);
  t.false(frozenNow(20, 0) || frozenNow(20, 1) || frozenNow(20, 2));
  const [after] = requestsAs(ctx.alice, ctx.agent.socket, [['step.create', { job: 20, step: 3 }]]);
  t.true(after.ok, JSON.stringify(after));
  t.false(frozenNow(20, 3));
  await c.request('destroy', { job: 20, force: true });
});

test.serial("an admin's freeze of one step, or the owner's freeze of its whole job, is no suspend: steps made later run", async (t) => {
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  await c.request('task.place', { job: 30, step: 0, owner: ctx.alice.uid, pid: await sleeper(ctx.alice) });
  await c.request('freeze', { job: 30, step: 0 });
  const [own, made, ownThaw, madeAfter] = requestsAs(ctx.alice, ctx.agent.socket, [
    ['step.create', { job: 30, step: 1 }],
    ['freeze', { job: 30, step: 1 }],
    ['thaw', { job: 30, step: 1 }],
    ['step.create', { job: 30, step: 2 }],
  ]);
  t.true(own.ok && made.ok && ownThaw.ok && madeAfter.ok, JSON.stringify([own, made, ownThaw, madeAfter]));
  t.true(frozenNow(30, 0));
  t.false(frozenNow(30, 1) || frozenNow(30, 2));
  const [mine, ownWhole, later] = requestsAs(ctx.alice, ctx.agent.socket, [
    ['step.create', { job: 31, step: 0 }],
    ['freeze', { job: 31 }],
    ['step.create', { job: 31, step: 1 }],
  ]);
  t.true(mine.ok && ownWhole.ok && later.ok, JSON.stringify([mine, ownWhole, later]));
  t.true(frozenNow(31, 0));
  t.false(frozenNow(31, 1), "the owner's own freeze of its job does not hold steps it makes later");
  await c.request('destroy', { job: 30, force: true });
  await c.request('destroy', { job: 31, force: true });
});
