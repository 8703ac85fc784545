/**
 * An allowed uid could make any number of jobs and steps, so one local user
 * could grow the tree to tens of thousands of steps and make list, stats,
 * /metrics and a restart slow for everyone. Now a user owns at most
 * --max-user-jobs live jobs and --max-user-steps live steps: a request that
 * would go over is refused with ENOSPC and makes nothing; root and operators
 * are never capped; the count is rebuilt from the owner xattrs at a restart.
 * Real agent (caps 3 jobs, 5 steps), real throwaway uids through setpriv.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { cli, waitFor } from '../helpers/agent.js';
import { cgstepAs, requestsAs, spawnAs, type Outcome, type TestUser, withTwoUsers } from '../helpers/users.js';
import { cgroupOf } from './helpers.js';

const ctx = withTwoUsers(test, 'caps', ['--max-user-jobs', '3', '--max-user-steps', '5', '--ignore-missing-controllers']);
const scope = () => path.join(ctx.root, 'system.slice/slurmstepd.scope');

const as = (u: TestUser, reqs: [string, object][]) => requestsAs(u, ctx.agent.socket, reqs);
const allOk = (t: any, out: Outcome[]) => out.forEach((o, i) => t.true(o.ok, `request ${i}: ${JSON.stringify(o.error)}`));
function over(t: any, o: Outcome, what: 'jobs' | 'steps', cap: number, owns = cap) {
  t.is(o.error?.code, 'ENOSPC', JSON.stringify(o));
  t.regex(o.error?.message ?? '', new RegExp(`uid ${ctx.alice.uid} owns ${owns} live ${what === 'jobs' ? 'job' : 'step'}\\(s\\).*--max-user-${what} ${cap}`));
}

test.serial('a user past its caps is refused with ENOSPC and nothing is made; destroying frees the slot', async (t) => {
  // 3 jobs, 5 steps: at both caps.
  allOk(t, as(ctx.alice, [['step.create', { job: 1, step: 0 }], ['step.create', { job: 1, step: 1 }], ['step.create', { job: 2, step: 0 }], ['step.create', { job: 2, step: 1 }], ['step.create', { job: 3, step: 0 }]]));
  const sleeper = spawnAs(ctx.alice, ['sleep', '600']);
  ctx.pids.push(sleeper.pid!);
  await waitFor(() => fs.readFileSync(`/proc/${sleeper.pid}/comm`, 'utf8').trim() === 'sleep', 5000, 'sleep to exec');
  const before = cgroupOf(sleeper.pid!);

  const [job4, step31, place5, place39, again] = as(ctx.alice, [
    ['job.create', { job: 4 }],
    ['step.create', { job: 3, step: 1 }],
    ['task.place', { job: 5, step: 0, pid: sleeper.pid, task: 0 }],
    ['task.place', { job: 3, step: 9, pid: sleeper.pid, task: 0 }],
    // What exists costs nothing more: the same requests again are accepted.
    ['step.create', { job: 2, step: 1 }],
  ]);
  over(t, job4, 'jobs', 3);
  over(t, step31, 'steps', 5);
  over(t, place5, 'jobs', 3);
  over(t, place39, 'steps', 5);
  t.true(again.ok, JSON.stringify(again.error));
  for (const d of ['job_4', 'job_5', 'job_3/step_1', 'job_3/step_9']) t.false(fs.existsSync(path.join(scope(), d)), `${d} was made`);
  t.is(cgroupOf(sleeper.pid!), before, 'the pid was moved');

  // Per uid: bob is not held back by alice's count.
  allOk(t, as(ctx.bob, [['step.create', { job: 50, step: 0 }]]));

  // Destroying a step frees a step; destroying a job frees a job and its steps.
  allOk(t, as(ctx.alice, [['destroy', { job: 2, step: 1 }], ['step.create', { job: 3, step: 1 }], ['destroy', { job: 1 }], ['task.place', { job: 4, step: 0, pid: sleeper.pid, task: 0 }]]));
  t.true(cgroupOf(sleeper.pid!).endsWith('/job_4/step_0/user/task_0'));
  const [step41, step42] = as(ctx.alice, [['step.create', { job: 4, step: 1 }], ['step.create', { job: 4, step: 2 }]]);
  t.true(step41.ok, JSON.stringify(step41.error));
  over(t, step42, 'steps', 5);
});

test.serial('root and operators are never capped, also when they name the user as the owner', async (t) => {
  const c = await ctx.agent.client();
  try {
    for (const job of [100, 101, 102, 103]) await c.request('step.create', { job, step: 0 });
    for (const job of [110, 111]) await c.request('job.create', { job, owner: ctx.alice.uid });
    await c.request('step.create', { job: 4, step: 5 });
    await c.request('step.create', { job: 110, step: 0 });
  } finally {
    c.close();
  }
  t.true(fs.existsSync(path.join(scope(), 'job_110/step_0')));
  // Alice now owns 5 jobs and 7 steps, given by root; she may make no more.
  over(t, as(ctx.alice, [['job.create', { job: 6 }]])[0], 'jobs', 3, 5);
});

test.serial('the count is rebuilt from the owner xattrs when the agent restarts; status shows the caps', async (t) => {
  await ctx.restart();
  over(t, as(ctx.alice, [['job.create', { job: 6 }]])[0], 'jobs', 3, 5);
  t.false(fs.existsSync(path.join(scope(), 'job_6')));
  // 5 jobs (2, 3, 4, 110, 111) and 7 steps: three jobs and two steps go, and one of each fits again.
  allOk(t, as(ctx.alice, [['destroy', { job: 110 }], ['destroy', { job: 111 }], ['destroy', { job: 4, step: 5 }], ['destroy', { job: 2 }]]));
  allOk(t, as(ctx.alice, [['step.create', { job: 6, step: 0 }]]));
  over(t, as(ctx.alice, [['job.create', { job: 7 }]])[0], 'jobs', 3);

  const status = cgstepAs({ name: 'root', uid: 0, gid: 0 }, ctx.agent.socket, ['status']);
  t.is(status.result?.config?.userCaps?.jobs, 3, status.stdout);
  t.is(status.result?.config?.userCaps?.steps, 5);
  t.is(status.result?.config?.userCaps?.tasks, 4096, 'the default');
  t.regex(cli(ctx.agent.socket, ['status']).stdout, /^user caps: +3 live job\(s\), 5 step\(s\), 4096 task leaves per uid other than root and operators \(--max-user-jobs, --max-user-steps, --max-user-tasks\)$/m);
});
