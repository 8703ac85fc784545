/**
 * A job's owner is kept in the job directory's xattr trusted.cgstep.owner, so
 * an agent that is stopped and started again still knows whose job it is.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { getXattr } from '../../src/cgroupfs/index.js';
import type { RunningAgent } from '../helpers/agent.js';
import { makeTestRoot, removeTestRoot } from '../helpers/cgroup.js';
import { addUser, cgstepAs, removeUser, socketDir, startMultiUser, type TestUser } from '../helpers/users.js';

const ctx: { root: string; dir: string; agent: RunningAgent; alice: TestUser; bob: TestUser } = {} as any;
const args = () => ['--allow-uid', String(ctx.alice.uid), '--allow-uid', String(ctx.bob.uid)];

test.before(async () => {
  ctx.alice = addUser('cgs_authz');
  ctx.bob = addUser('cgs_authz');
  ctx.root = makeTestRoot('sec-owner');
  ctx.dir = socketDir('sec-owner');
  ctx.agent = await startMultiUser(ctx.root, ctx.dir, args());
});
test.after.always(async () => {
  await ctx.agent?.stop();
  fs.rmSync(ctx.dir, { recursive: true, force: true });
  await removeTestRoot(ctx.root);
  removeUser(ctx.alice);
  removeUser(ctx.bob);
});

test('the owner survives an agent restart', async (t) => {
  t.is(cgstepAs(ctx.alice, ctx.agent.socket, ['step', 'create', '801', '0']).code, 0);
  const c = await ctx.agent.client();
  await c.request('job.create', { job: 802 });
  c.close();
  const jobDir = path.join(ctx.root, 'system.slice/slurmstepd.scope/job_801');
  t.is(getXattr(jobDir, 'trusted.cgstep.owner')?.toString(), String(ctx.alice.uid));
  t.is(getXattr(path.join(ctx.root, 'system.slice/slurmstepd.scope/job_802'), 'trusted.cgstep.owner'), null, "root's job carries no owner");

  await ctx.agent.stop();
  ctx.agent = await startMultiUser(ctx.root, ctx.dir, args());

  const bob = cgstepAs(ctx.bob, ctx.agent.socket, ['destroy', '801', '--force']);
  t.is(bob.error?.code, 'EPERM', bob.stderr);
  t.regex(bob.error!.message, new RegExp(`job 801 belongs to uid ${ctx.alice.uid}`));
  const alice = cgstepAs(ctx.alice, ctx.agent.socket, ['list']);
  t.deepEqual(alice.result.jobs.map((j: any) => j.job), ['801']);
  t.is(cgstepAs(ctx.alice, ctx.agent.socket, ['destroy', '802']).error?.code, 'EPERM', 'a job without the xattr is root\'s');
  t.is(cgstepAs(ctx.alice, ctx.agent.socket, ['destroy', '801']).code, 0);
});
