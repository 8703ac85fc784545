/**
 * A job's owner is kept in the job directory's xattr trusted.cgstep.owner, so
 * an agent that is stopped and started again still knows whose job it is.
 */
import test from 'ava';
import path from 'node:path';
import { getXattr } from '../../src/cgroupfs/index.js';
import { cgstepAs, withTwoUsers } from '../helpers/users.js';

const ctx = withTwoUsers(test, 'owner', []);

test('the owner survives an agent restart', async (t) => {
  t.is(cgstepAs(ctx.alice, ctx.agent.socket, ['step', 'create', '801', '0']).code, 0);
  const c = await ctx.agent.client();
  await c.request('job.create', { job: 802 });
  c.close();
  const jobDir = path.join(ctx.root, 'system.slice/slurmstepd.scope/job_801');
  t.is(getXattr(jobDir, 'trusted.cgstep.owner')?.toString(), String(ctx.alice.uid));
  t.is(getXattr(path.join(ctx.root, 'system.slice/slurmstepd.scope/job_802'), 'trusted.cgstep.owner'), null, "root's job carries no owner");

  await ctx.restart();

  const bob = cgstepAs(ctx.bob, ctx.agent.socket, ['destroy', '801', '--force']);
  t.is(bob.error?.code, 'EPERM', bob.stderr);
  t.regex(bob.error!.message, new RegExp(`job 801 belongs to uid ${ctx.alice.uid}`));
  const alice = cgstepAs(ctx.alice, ctx.agent.socket, ['list']);
  t.deepEqual(alice.result.jobs.map((j: any) => j.job), ['801']);
  t.is(cgstepAs(ctx.alice, ctx.agent.socket, ['destroy', '802']).error?.code, 'EPERM', 'a job without the xattr is root\'s');
  t.is(cgstepAs(ctx.alice, ctx.agent.socket, ['destroy', '801']).code, 0);
});
