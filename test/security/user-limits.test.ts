/**
 * An allowed uid could give a job it made cpuWeight 10000: where the cpu
 * controller is delegated its job then takes the CPU from the jobs beside it
 * (Slurm's, at the default 100). Now a user may only lower a cpu weight; the
 * limits that only restrict what a new level gets (cpu.max, memory, pids)
 * stay its own to set. The check is the request's, before anything is made,
 * so it holds on a host without the cpu controller (this one: the agent runs
 * with --ignore-missing-controllers). Real agent, real throwaway uids.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { waitFor } from '../helpers/agent.js';
import { requestsAs, spawnAs, withTwoUsers } from '../helpers/users.js';
import { cgroupOf } from './helpers.js';

const ctx = withTwoUsers(test, 'ulimits', ['--ignore-missing-controllers']);
const jobDir = (job: number) => path.join(ctx.root, 'system.slice/slurmstepd.scope', `job_${job}`);

test.serial("a user's cpu weight above the default is refused on every level it makes, and nothing is made or moved", async (t) => {
  const s = spawnAs(ctx.alice, ['sleep', '600']);
  ctx.pids.push(s.pid!);
  await waitFor(() => fs.readFileSync(`/proc/${s.pid}/comm`, 'utf8').trim() === 'sleep', 5000, 'sleep to exec');
  const was = cgroupOf(s.pid!);
  const tries = requestsAs(ctx.alice, ctx.agent.socket, [
    ['job.create', { job: 921, limits: { cpuWeight: 10000, cpuMax: 'max' } }],
    ['step.create', { job: 922, step: 0, limits: { cpuWeight: 101 } }],
    ['task.place', { job: 923, step: 0, pid: s.pid, task: 0, jobLimits: { cpuWeight: 200 } }],
    ['task.place', { job: 924, step: 0, pid: s.pid, task: 0, stepLimits: { cpuWeight: 200 } }],
  ]);
  const fields = ['limits', 'limits', 'jobLimits', 'stepLimits'];
  tries.forEach((o, i) => {
    t.is(o.error?.code, 'EPERM', JSON.stringify(o));
    t.regex(o.error?.message ?? '', new RegExp(`^${fields[i]}\\.cpuWeight \\d+: uid ${ctx.alice.uid} may only lower a cpu weight \\(at most 100, the default\\)`));
  });
  for (const job of [921, 922, 923, 924]) t.false(fs.existsSync(jobDir(job)), `job ${job} was made`);
  t.is(cgroupOf(s.pid!), was, 'the process was moved');
});

test.serial('a user may lower the cpu weight and set limits that only restrict; root may raise the weight', async (t) => {
  const ok = requestsAs(ctx.alice, ctx.agent.socket, [
    ['job.create', { job: 925, limits: { cpuWeight: 100, cpuMax: '50000 100000', pids: 64, memory: 1 << 30 } }],
    ['step.create', { job: 925, step: 0, limits: { cpuWeight: 1 } }],
  ]);
  ok.forEach((o, i) => t.true(o.ok, `request ${i}: ${JSON.stringify(o.error)}`));
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  const r = await c.request('job.create', { job: 926, owner: ctx.alice.uid, limits: { cpuWeight: 10000 } });
  t.true(r.created);
  for (const job of [925, 926]) await c.request('destroy', { job, force: true });
});
