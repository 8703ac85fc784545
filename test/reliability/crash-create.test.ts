/**
 * Nothing half-made goes unreported: after a restart the agent checks every
 * adopted job, step and user/ (after it answers, off the event loop) and
 * repairs what a crash mid-create left behind, or names it in status's
 * `degraded`. Shown on directories broken by hand the way a crash leaves them,
 * one that cannot be repaired (a process sitting in an inner directory), and
 * on the agent SIGKILLed in the middle of a create flood.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { makeTestRoot, removeTestRoot } from '../helpers/cgroup.js';
import { killPid, sleep, spawnSleeper, startAgent, tmpSocket, waitFor, type RunningAgent } from '../helpers/agent.js';
import { CgstepClient } from '../../src/rpc/client.js';

const ctx: { root: string; socket: string; scope: string; agent: RunningAgent | null; pids: number[] } = { root: '', socket: '', scope: '', agent: null, pids: [] };
const ARGS = ['--ignore-systemd', '--log-level', 'warn', '--node-name', 'crash'];

test.before(() => {
  ctx.root = makeTestRoot('crash');
  ctx.socket = tmpSocket('crash');
  ctx.scope = path.join(ctx.root, 'system.slice', 'crash_slurmstepd.scope');
});

test.after.always(async () => {
  await ctx.agent?.stop('SIGKILL');
  for (const p of ctx.pids) killPid(p);
  fs.rmSync(path.dirname(ctx.socket), { recursive: true, force: true });
  await removeTestRoot(ctx.root);
});

const words = (f: string) => fs.readFileSync(f, 'utf8').split(/\s+/).filter(Boolean);
const subtree = (dir: string) => words(path.join(dir, 'cgroup.subtree_control'));

async function restart(): Promise<{ status: any }> {
  await ctx.agent?.stop('SIGKILL');
  ctx.agent = await startAgent({ root: ctx.root, socket: ctx.socket, args: ARGS });
  const c = await ctx.agent.client();
  try {
    let status: any;
    await waitFor(async () => (status = await c.request('status', {})).layout.checkedAt !== null, 30000, 'the layout check');
    return { status };
  } finally {
    c.close();
  }
}

/** Every job, step and user/ passes the scope's controllers down and every step has slurm/ and user/, or its path is in degraded. */
function assertWholeOrReported(t: any, enabled: string[], degraded: string[]): number {
  let levels = 0;
  const reported = (dir: string) => degraded.some((d) => d.startsWith(`${dir}:`));
  const whole = (dir: string) => {
    levels++;
    const missing = enabled.filter((c) => !subtree(dir).includes(c));
    t.true(missing.length === 0 || reported(dir), `${dir} lacks ${missing.join(' ')} and is not reported`);
  };
  for (const jn of fs.readdirSync(ctx.scope).filter((n) => n.startsWith('job_'))) {
    const job = path.join(ctx.scope, jn);
    whole(job);
    for (const sn of fs.readdirSync(job).filter((n) => n.startsWith('step_'))) {
      const step = path.join(job, sn);
      whole(step);
      t.true(fs.existsSync(path.join(step, 'slurm')), `${step}/slurm missing`);
      t.true(fs.existsSync(path.join(step, 'user')), `${step}/user missing`);
      whole(path.join(step, 'user'));
    }
  }
  return levels;
}

test.serial('directories left half-made are repaired after a restart; one that cannot be is reported', async (t) => {
  ctx.agent = await startAgent({ root: ctx.root, socket: ctx.socket, args: ARGS });
  const c = await ctx.agent.client();
  for (let job = 1; job <= 5; job++) await c.request('step.create', { job, step: 0 });
  const enabled: string[] = (await c.request('status', {})).controllers.enabled;
  c.close();
  await ctx.agent.stop('SIGKILL');
  const job = (n: number) => path.join(ctx.scope, `job_${n}`);
  const off = (dir: string) => {
    if (enabled.length) fs.writeFileSync(path.join(dir, 'cgroup.subtree_control'), enabled.map((x) => `-${x}`).join(' '));
  };
  // Killed before user/'s controllers were written.
  off(path.join(job(2), 'step_0', 'user'));
  // Killed right after the step's mkdir: no slurm/, no user/, no controllers.
  fs.rmdirSync(path.join(job(3), 'step_0', 'user'));
  fs.rmdirSync(path.join(job(3), 'step_0', 'slurm'));
  off(path.join(job(3), 'step_0'));
  // Killed right after the job's mkdir.
  for (const d of ['user', 'slurm']) fs.rmdirSync(path.join(job(4), 'step_0', d));
  fs.rmdirSync(path.join(job(4), 'step_0'));
  off(job(4));
  // A process in user/ itself: the kernel refuses controllers below it (no internal processes).
  const stuck = path.join(job(5), 'step_0', 'user');
  off(stuck);
  const p = spawnSleeper();
  ctx.pids.push(p.pid!);
  fs.writeFileSync(path.join(stuck, 'cgroup.procs'), String(p.pid));

  const { status } = await restart();
  for (const dir of [path.join(job(2), 'step_0', 'user'), path.join(job(3), 'step_0'), path.join(job(3), 'step_0', 'user'), job(4)]) t.deepEqual(subtree(dir).sort(), [...enabled].sort(), dir);
  t.true(fs.existsSync(path.join(job(3), 'step_0', 'slurm')));
  t.is(status.layout.levels, 13); // 5 jobs, 4 steps, 4 user/
  if (enabled.length) {
    t.is(status.layout.repaired, 5); // job 2 user/, job 3 step and its slurm/ and user/, job 4
    t.is(status.layout.failed, 1);
    t.true(status.degraded.some((d: string) => d.startsWith(`${stuck}:`) && /not repaired/.test(d)), JSON.stringify(status.degraded));
    // The failure is logged whole: the kernel's error with its type and stack, not its words alone.
    const line = ctx.agent.log().split('\n').find((l) => l.includes('could not be repaired'));
    t.truthy(line, 'the repair failure is logged');
    const err = JSON.parse(line!).err;
    t.is(err.type, 'KernelError');
    t.regex(err.stack, /at /);
  } else {
    t.is(status.layout.repaired, 2); // job 3's slurm/ and user/
  }
  t.true(assertWholeOrReported(t, enabled, status.degraded) >= 13);
  // Moved out and the job destroyed: nothing left to report.
  const park = path.join(ctx.root, 'park');
  fs.mkdirSync(park);
  fs.writeFileSync(path.join(park, 'cgroup.procs'), String(p.pid));
  const c2 = await ctx.agent!.client();
  await c2.request('destroy', { job: 5 });
  t.false((await c2.request('status', {})).degraded.some((d: string) => d.includes('job_5')));
  c2.close();
});

test.serial('SIGKILL in the middle of a create flood, three times: every level whole or reported after each restart', async (t) => {
  let base = 1000;
  for (let round = 0; round < 3; round++) {
    if (!ctx.agent || ctx.agent.proc.exitCode !== null) await restart();
    const flood = Array.from({ length: 4 }, async (_, k) => {
      const c = await CgstepClient.connect(ctx.socket, { timeoutMs: 5000 }).catch(() => null);
      if (!c) return;
      try {
        for (let i = 0; ; i++) await c.request('step.create', { job: base + k * 10000 + i, step: i % 3 });
      } catch {
        /* the agent died under it */
      } finally {
        c.close();
      }
    });
    await sleep(150 + Math.random() * 250);
    await ctx.agent!.stop('SIGKILL');
    await Promise.all(flood);
    base += 100000;
    const { status } = await restart();
    const levels = assertWholeOrReported(t, status.controllers.enabled, status.degraded);
    t.true(levels > 0, 'the flood made steps');
    t.is(status.layout.levels, levels, 'the check saw every level');
  }
});
