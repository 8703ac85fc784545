/**
 * An allowed uid could freeze, signal or destroy --force any job, root's and
 * other users' alike. Now a user acts on the jobs it owns only: the ones it
 * created, or that root gave it (job.create --owner); it lists and hears
 * about its own jobs only. Run as real other uids through setpriv against a
 * real agent.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { CGSTEP, killPid, waitFor, type RunningAgent } from '../helpers/agent.js';
import { makeTestRoot, removeTestRoot } from '../helpers/cgroup.js';
import { addGroup, addUser, cgstepAs, removeGroup, removeUser, requestsAs, socketDir, spawnAs, startMultiUser, type TestUser } from '../helpers/users.js';
import { cgroupOf } from './helpers.js';

const ctx: { root: string; dir: string; agent: RunningAgent; alice: TestUser; bob: TestUser; reader: TestUser; group: { name: string; gid: number }; pids: number[] } = { pids: [] } as any;

test.before(async () => {
  ctx.alice = addUser('cgs_authz');
  ctx.bob = addUser('cgs_authz');
  ctx.group = addGroup('cgs_authz');
  ctx.reader = addUser('cgs_authz');
  // A supplementary member of the read-only group (setpriv --init-groups gives it).
  spawnSync('usermod', ['--append', '--groups', ctx.group.name, ctx.reader.name]);
  ctx.root = makeTestRoot('sec-own');
  ctx.dir = socketDir('sec-own');
  ctx.agent = await startMultiUser(ctx.root, ctx.dir, ['--allow-uid', String(ctx.alice.uid), '--allow-uid', String(ctx.bob.uid), '--read-only-gid', String(ctx.group.gid), '--ignore-missing-controllers']);
});
test.after.always(async () => {
  for (const p of ctx.pids) killPid(p);
  await ctx.agent?.stop();
  fs.rmSync(ctx.dir, { recursive: true, force: true });
  await removeTestRoot(ctx.root);
  for (const u of [ctx.alice, ctx.bob, ctx.reader]) removeUser(u);
  removeGroup(ctx.group);
});

const ROOT: TestUser = { name: 'root', uid: 0, gid: 0 };
const as = (u: TestUser, args: string[]) => cgstepAs(u, ctx.agent.socket, args);

function refused(t: any, r: { error?: { code: string; message: string }; stderr?: string; stdout?: string }, why: RegExp) {
  t.is(r.error?.code, 'EPERM', r.stderr || r.stdout);
  t.regex(r.error?.message ?? '', why);
}

/** alice's job 701 with a sleep of hers in task 0. */
async function aliceJob(t: any): Promise<number> {
  t.is(as(ctx.alice, ['step', 'create', '701', '0']).code, 0);
  const s = spawnAs(ctx.alice, ['sleep', '600']);
  ctx.pids.push(s.pid!);
  await waitFor(() => fs.readFileSync(`/proc/${s.pid}/comm`, 'utf8').trim() === 'sleep', 5000, 'sleep to exec');
  const r = as(ctx.alice, ['attach', '701', '0', String(s.pid), '--task', '0']);
  t.is(r.code, 0, r.stderr);
  return s.pid!;
}

/** A sleep of bob's, outside every job. */
function bobSleep(): number {
  const s = spawnAs(ctx.bob, ['sleep', '600']);
  ctx.pids.push(s.pid!);
  return s.pid!;
}

const state = (pid: number) => /^State:\s+(\S)/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))![1];

test.serial("freeze, signal STOP and destroy --force of another user's job are refused; its owner may", async (t) => {
  const pid = await aliceJob(t);
  const why = new RegExp(`job 701 belongs to uid ${ctx.alice.uid}; uid ${ctx.bob.uid} may act on its own jobs only`);
  refused(t, as(ctx.bob, ['freeze', '701']), why);
  const more = requestsAs(ctx.bob, ctx.agent.socket, [
    ['signal', { job: 701, step: 0, signal: 'STOP' }],
    ['destroy', { job: 701, force: true }],
    ['stats', { job: 701 }],
    ['step.create', { job: 701, step: 1 }],
    ['attach', { job: 701, step: 0, pid: bobSleep(), task: 0 }],
  ]);
  for (const o of more) refused(t, o, why);
  t.not(state(pid), 'T', 'stopped');
  t.true(cgroupOf(pid).endsWith('/job_701/step_0/user/task_0'), 'the job is gone');
  const frozen = fs.readFileSync(`${ctx.root}/system.slice/slurmstepd.scope/job_701/step_0/user/cgroup.events`, 'utf8');
  t.regex(frozen, /frozen 0/);
  // The owner may do all of it.
  const own = requestsAs(ctx.alice, ctx.agent.socket, [
    ['freeze', { job: 701 }],
    ['thaw', { job: 701 }],
    ['signal', { job: 701, step: 0, signal: 'CONT' }],
    ['stats', { job: 701 }],
    ['destroy', { job: 701, force: true }],
  ]);
  for (const o of own) t.true(o.ok, JSON.stringify(o.error));
  const d = own[4];
  t.is(d.result.killed, 1);
});

test.serial("root's jobs are out of a user's reach; root may give a job to a user", async (t) => {
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  await c.request('step.create', { job: 702, step: 0 });
  refused(t, as(ctx.alice, ['destroy', '702', '--force']), /job 702 belongs to uid 0/);
  refused(t, as(ctx.alice, ['job', 'create', '703', '--owner', String(ctx.bob.uid)]), /only root or an operator may name a job's owner/);
  // root gives 704 to alice: she may act on it, bob may not.
  t.is(cgstepAs(ROOT, ctx.agent.socket, ['job', 'create', '704', '--owner', String(ctx.alice.uid)]).code, 0);
  t.is(as(ctx.alice, ['step', 'create', '704', '0']).code, 0);
  refused(t, as(ctx.bob, ['freeze', '704']), /job 704 belongs to uid/);
  // A user may not change the limits of a job root made for it.
  refused(t, as(ctx.alice, ['job', 'create', '704', '--pids', '5']), /job 704 exists: changing its limits or device policy needs root/);
  for (const j of ['702', '704']) await c.request('destroy', { job: j, force: true });
});

test.serial('list and events show a user its own jobs only; a read-only group sees every job', async (t) => {
  for (const [u, j] of [[ctx.alice, '706'], [ctx.bob, '707']] as const) t.is(as(u, ['step', 'create', j, '0']).code, 0);
  const jobs = (u: TestUser) => as(u, ['list']).result.jobs.map((j: any) => j.job).sort();
  t.deepEqual(jobs(ctx.alice), ['706']);
  t.deepEqual(jobs(ctx.bob), ['707']);
  t.deepEqual(jobs(ctx.reader), ['706', '707']);
  t.is(as(ctx.reader, ['stats', '706']).code, 0);
  refused(t, as(ctx.reader, ['freeze', '706']), /may only use read-only requests/);
  // Both jobs freeze; bob's subscription hears only his, the reader's both.
  const listen = (u: TestUser) => {
    const p = spawnAs(u, [process.execPath, CGSTEP, '--socket', ctx.agent.socket, '--json', 'events'], { stdio: ['ignore', 'pipe', 'ignore'] });
    ctx.pids.push(p.pid!);
    const seen: any[] = [];
    let buf = '';
    p.stdout!.on('data', (d) => {
      buf += d;
      for (let i; (i = buf.indexOf('\n')) >= 0; buf = buf.slice(i + 1)) seen.push(JSON.parse(buf.slice(0, i)));
    });
    return { p, seen };
  };
  const bob = listen(ctx.bob);
  const reader = listen(ctx.reader);
  // Freeze and thaw both jobs until both subscriptions have heard events (the CLI prints no reply to the subscription).
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  await waitFor(async () => {
    for (const job of [706, 707]) {
      await c.request('freeze', { job });
      await c.request('thaw', { job });
    }
    const jobsSeen = new Set(reader.seen.map((e) => e.job));
    return jobsSeen.has('706') && jobsSeen.has('707') && bob.seen.length > 0;
  }, 20000, 'both subscribers to hear events');
  t.deepEqual([...new Set(bob.seen.map((e) => e.job))], ['707']);
  t.deepEqual([...new Set(reader.seen.map((e) => e.job))].sort(), ['706', '707']);
  killPid(bob.p.pid);
  killPid(reader.p.pid);
  for (const job of [706, 707]) await c.request('destroy', { job });
});
