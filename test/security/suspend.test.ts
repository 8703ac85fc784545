/**
 * An admin's freeze of a job is a suspend: its owner may not thaw it, and a
 * refused freeze or thaw leaves the steps as they were (their cgroup.freeze
 * and the admin's mark), so a thaw that times out does not half-resume the
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
  await c.request('thaw', { job: 10 });
  t.false(frozenNow(10, 0));
  await c.request('destroy', { job: 10, force: true });
});
