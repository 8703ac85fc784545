/**
 * Task leaves per user: each is a directory, its share of inotify watches and,
 * with its own device rules, a BPF program; a user placing into task 0..N
 * could make thousands. --max-user-tasks bounds the live leaves of all its
 * steps: one more is ENOSPC and makes nothing; placing into a leaf that exists
 * costs nothing; destroying a step frees its leaves. Root is never capped.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { waitFor } from '../helpers/agent.js';
import { requestsAs, spawnAs, withTwoUsers } from '../helpers/users.js';

const ctx = withTwoUsers(test, 'tcaps', ['--max-user-tasks', '3']);
const user = (job: number, step: number) => path.join(ctx.root, 'system.slice/slurmstepd.scope', `job_${job}`, `step_${step}`, 'user');

async function sleeperOf(u: typeof ctx.alice): Promise<number> {
  const s = spawnAs(u, ['sleep', '600']);
  ctx.pids.push(s.pid!);
  await waitFor(() => fs.readFileSync(`/proc/${s.pid}/comm`, 'utf8').trim() === 'sleep', 5000, 'sleep to exec');
  return s.pid!;
}

test.serial('a user past --max-user-tasks is refused with ENOSPC and no leaf is made; an existing leaf and root are not capped', async (t) => {
  const pids = [await sleeperOf(ctx.alice), await sleeperOf(ctx.alice), await sleeperOf(ctx.alice), await sleeperOf(ctx.alice)];
  const ok = requestsAs(ctx.alice, ctx.agent.socket, [
    ['task.place', { job: 11, step: 0, pid: pids[0], task: 0, devices: { deny: ['c 1:5 rwm'] } }],
    ['task.place', { job: 11, step: 0, pid: pids[1], task: 1 }],
    ['task.place', { job: 12, step: 0, pid: pids[2], task: 0 }],
  ]);
  for (const o of ok) t.true(o.ok, JSON.stringify(o.error));
  const [over, overAttach] = requestsAs(ctx.alice, ctx.agent.socket, [
    ['task.place', { job: 11, step: 0, pid: pids[3], task: 2 }],
    ['attach', { job: 12, step: 0, pid: pids[3], task: 7 }],
  ]);
  for (const o of [over, overAttach]) {
    t.is(o.error?.code, 'ENOSPC', JSON.stringify(o));
    t.regex(o.error!.message, new RegExp(`uid ${ctx.alice.uid} owns 3 live task leaves.*--max-user-tasks 3`));
  }
  t.false(fs.existsSync(path.join(user(11, 0), 'task_2')));
  t.false(fs.existsSync(path.join(user(12, 0), 'task_7')));
  // At the cap, a leaf that exists takes one more of her processes.
  const [existing] = requestsAs(ctx.alice, ctx.agent.socket, [['task.place', { job: 11, step: 0, pid: pids[3], task: 1 }]]);
  t.true(existing.ok, JSON.stringify(existing.error));
  // Root places anything for her.
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  await c.request('attach', { job: 12, step: 0, pid: pids[3], task: 5 });
  t.true(fs.existsSync(path.join(user(12, 0), 'task_5')));
  // Destroying a step frees its leaves (job 12 holds two now: hers and root's).
  await c.request('destroy', { job: 12, force: true });
  const fresh = await sleeperOf(ctx.alice);
  const [after] = requestsAs(ctx.alice, ctx.agent.socket, [['task.place', { job: 11, step: 0, pid: fresh, task: 2 }]]);
  t.true(after.ok, JSON.stringify(after.error));
  await c.request('destroy', { job: 11, force: true });
});

test.serial('the task leaves a user owns are counted again after a restart: a user at the cap stays there', async (t) => {
  const pids = [await sleeperOf(ctx.alice), await sleeperOf(ctx.alice), await sleeperOf(ctx.alice), await sleeperOf(ctx.alice)];
  const ok = requestsAs(ctx.alice, ctx.agent.socket, [0, 1, 2].map((i) => ['task.place', { job: 13, step: 0, pid: pids[i], task: i }] as [string, object]));
  for (const o of ok) t.true(o.ok, JSON.stringify(o.error));
  await ctx.restart();
  // Until the adopted leaves are watched (counted) a request for a new one is EBUSY; after, ENOSPC. Never a fourth leaf.
  const deadline = Date.now() + 10000;
  let last;
  do {
    [last] = requestsAs(ctx.alice, ctx.agent.socket, [['task.place', { job: 13, step: 0, pid: pids[3], task: 3 }]]);
    t.not(last.ok, true, 'a fourth leaf was made');
  } while (last.error?.code === 'EBUSY' && Date.now() < deadline);
  t.is(last.error?.code, 'ENOSPC', JSON.stringify(last));
  t.false(fs.existsSync(path.join(user(13, 0), 'task_3')));
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  await c.request('destroy', { job: 13, force: true });
});
