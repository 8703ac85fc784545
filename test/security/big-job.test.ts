/**
 * An allowed user's requests on its own big job (1,020 steps of 4 task leaves,
 * within the default caps) must not hold the agent's event loop for long:
 * signal, freeze, thaw, list and destroy each touch every step and leaf, and
 * they give the loop back every few ms, as stats does, so root's status stays
 * answered. Each still runs whole inside the job's lock: a request on the same
 * job waits for it. Root builds the job for the user (`owner`) because a user
 * building it at its token rate takes a minute; what is measured is the user's
 * requests alone.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { makeTestRoot, removeTestRoot } from '../helpers/cgroup.js';
import { REPO, killPid, startAgent, waitFor, type RunningAgent } from '../helpers/agent.js';
import { addUser, removeUser, socketDir, spawnAs, type TestUser } from '../helpers/users.js';
import { sampleRootStatus } from './helpers.js';
import type { CgstepClient } from '../../src/rpc/client.js';

const STEPS = 1020;
const TASKS = 4;

const ctx: { root: string; dir: string; agent: RunningAgent; user: TestUser; pids: number[] } = { pids: [] } as any;

test.before(async () => {
  ctx.user = addUser('cgs_big');
  ctx.root = makeTestRoot('bigjob');
  ctx.dir = socketDir('bigjob');
  ctx.agent = await startAgent({ root: ctx.root, socket: path.join(ctx.dir, 's.sock'), args: ['--ignore-systemd', '--log-level', 'warn', '--allow-uid', String(ctx.user.uid)] });
  const c = await ctx.agent.client();
  try {
    await buildJob(c, 700, await sleepers(TASKS));
  } finally {
    c.close();
  }
});
test.after.always(async () => {
  for (const p of ctx.pids) killPid(p);
  await ctx.agent?.stop();
  if (ctx.dir) fs.rmSync(ctx.dir, { recursive: true, force: true });
  if (ctx.root) await removeTestRoot(ctx.root);
  removeUser(ctx.user);
});

/** The user's sleeping processes, `n` of them (killed by pid after the file). */
async function sleepers(n: number): Promise<number[]> {
  const ps = Array.from({ length: n }, () => spawnAs(ctx.user, ['sleep', '600']));
  const pids = ps.map((p) => p.pid!);
  ctx.pids.push(...pids);
  await waitFor(() => pids.every((p) => fs.readFileSync(`/proc/${p}/comm`, 'utf8').trim() === 'sleep'), 5000, 'the sleeps to exec');
  return pids;
}

/**
 * Job `job`, the user's, with STEPS steps of TASKS task leaves each: the
 * user's processes are placed into each step's leaves in turn (a leaf stays
 * when its process moves on), so they end up in the last step.
 */
async function buildJob(c: CgstepClient, job: number, pids: number[]): Promise<void> {
  await c.request('job.create', { job, owner: ctx.user.uid });
  for (let s = 0; s < STEPS; s += 50) {
    await Promise.all(
      Array.from({ length: Math.min(50, STEPS - s) }, (_, k) => c.request('task.place', { job, step: s + k, tasks: pids.map((pid, task) => ({ task, pid })) })),
    );
  }
}

// As the user: `rounds` of signal, freeze, thaw and list on the job, then its
// destroy; an EBUSY (the uid's token rate) is waited out as it says. Prints
// each op's reply times.
const LOOP = `
const { CgstepClient } = await import(process.argv[1]);
const [socket, job, rounds] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])];
const c = await CgstepClient.connect(socket, { timeoutMs: 60000 });
const times = {};
async function send(op, args) {
  for (;;) {
    const t0 = performance.now();
    try {
      const r = await c.request(op, args);
      (times[op] ??= []).push(Math.round(performance.now() - t0));
      return r;
    } catch (e) {
      if (e.code !== 'EBUSY' || !/too fast/.test(e.message)) throw e;
      await new Promise((r) => setTimeout(r, Number(/retry in (\\d+) ms/.exec(e.message)[1]) + 10));
    }
  }
}
for (let i = 0; i < rounds; i++) {
  await send('signal', { job, signal: 'CONT' });
  await send('freeze', { job });
  await send('thaw', { job });
  const l = await send('list', {});
  if (l.jobs[0].steps.length !== ${STEPS}) throw new Error('list saw ' + l.jobs[0].steps.length + ' steps');
}
const d = await send('destroy', { job, force: true });
c.close();
console.log(JSON.stringify({ times, killed: d.killed }));
`;

function loopAsUser(job: number, rounds: number): Promise<string> {
  const p = spawnAs(ctx.user, [process.execPath, '--input-type=module', '-e', LOOP, path.join(REPO, 'dist/rpc/client.js'), ctx.agent.socket, String(job), String(rounds)], { stdio: ['ignore', 'pipe', 'pipe'] }, []);
  ctx.pids.push(p.pid!);
  let out = '';
  p.stdout!.on('data', (d) => (out += d));
  p.stderr!.on('data', (d) => (out += d));
  return new Promise((resolve, reject) => p.once('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`the user's loop exited ${code}: ${out}`)))));
}

test.serial('a freeze of the big job lets root\'s status through while it runs, and a request on the same job waits for it', async (t) => {
  const [a, b, c] = await Promise.all([ctx.agent.client(), ctx.agent.client(), ctx.agent.client()]);
  t.teardown(() => [a, b, c].forEach((x) => x.close()));
  const done: string[] = [];
  const note = <T>(what: string, p: Promise<T>) => p.then((r) => (done.push(what), r));
  const freeze = note('freeze', a.request('freeze', { job: 700 }));
  await new Promise((r) => setTimeout(r, 5));
  const [frozen] = await Promise.all([freeze, note('status', b.request('status', {})), note('step.create', c.request('step.create', { job: 700, step: 5000 }))]);
  await a.request('thaw', { job: 700 });
  await a.request('destroy', { job: 700, step: 5000 });
  t.deepEqual(done, ['status', 'freeze', 'step.create'], 'status answered during the freeze; the step made after it');
  t.is(frozen.cgroups, STEPS, 'the freeze saw the steps there when it began, not the one made meanwhile');
});

test.serial("a user's signal, freeze, thaw, list and destroy of its 1,020-step job leave root's status answered within 150 ms", async (t) => {
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  const sampler = sampleRootStatus(ctx.agent.socket, { intervalMs: 20 });
  const out = await loopAsUser(700, 3);
  const { worstMs, samples, failures } = await sampler.stop();
  t.log(`the user's ops (ms): ${out.trim()}`);
  t.log(`root's worst status: ${worstMs} ms over ${samples} samples`);
  t.deepEqual(failures, []);
  t.is(JSON.parse(out).killed, TASKS, "the destroy killed the user's processes");
  t.true(worstMs < 150, `root's status took ${worstMs} ms while the user worked on its big job`);
  t.false((await c.request('list', {})).jobs.some((j: any) => j.job === '700'), 'the job is gone');
  t.false(fs.existsSync(path.join(ctx.root, 'system.slice/slurmstepd.scope', 'job_700')));
});
