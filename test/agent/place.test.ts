/**
 * One-request placement (task.place), the job's default device policy from
 * gres.conf, and all-or-nothing requests, through a real agent on the real
 * cgroup2 mount with two fake GPUs (mknod c 195:0-1: an allowed open fails
 * with ENXIO, a denied one with EPERM). Every refused request is checked to
 * leave the tree exactly as before (directories, processes, limit files,
 * device programs by id and their policy xattrs), including requests the
 * kernel refuses part-way (cgroup.max.depth, cgroup.max.descendants, a leaf
 * that has become an inner cgroup). The hostile-input corpus gets the same
 * check in test/reliability/refused.test.ts.
 */
import test from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { makeTestRoot, removeTestRoot, MOUNT } from '../helpers/cgroup.js';
import { killPid, startAgent, type RunningAgent } from '../helpers/agent.js';
import { gate } from '../helpers/gate.js';
import { snapshotTree } from '../helpers/snapshot.js';
import { DevNodes, Prober, kernelSkipReason } from '../devices/helpers.js';
import type { CgstepClient } from '../../src/rpc/client.js';

const skip = kernelSkipReason();
const kt = gate('BPF device control', { ok: !skip, reason: skip }, import.meta.url).test;

const ctx: { root: string; agent: RunningAgent; scope: string; nodes: DevNodes; c: CgstepClient; probers: Prober[]; kids: ChildProcess[]; checked: number } = {
  probers: [],
  kids: [],
  checked: 0,
} as any;

test.before(async () => {
  if (skip) return;
  ctx.root = makeTestRoot('place');
  ctx.nodes = new DevNodes();
  for (let i = 0; i < 2; i++) ctx.nodes.add(`nvidia${i}`, 'c', 195, i);
  const gres = path.join(ctx.nodes.dir, 'gres.conf');
  fs.writeFileSync(gres, `Name=gpu File=${ctx.nodes.dir}/nvidia[0-1]\n`);
  const conf = path.join(ctx.nodes.dir, 'cgroup.conf');
  fs.writeFileSync(conf, 'ConstrainDevices=yes\n');
  ctx.agent = await startAgent({ root: ctx.root, args: ['--ignore-systemd', '--node-name', 'n1', '--gres', gres, '--config', conf] });
  ctx.scope = path.join(ctx.root, 'system.slice', 'n1_slurmstepd.scope');
  ctx.c = await ctx.agent.client();
});

test.after.always(async () => {
  for (const p of ctx.probers) await p.kill();
  for (const k of ctx.kids) killPid(k.pid);
  ctx.c?.close();
  await ctx.agent?.stop();
  if (ctx.root) await removeTestRoot(ctx.root);
  ctx.nodes?.cleanup();
});

const gpu = (i: number) => ctx.nodes.paths[`nvidia${i}`];
const A = 'ENXIO';
const D = 'EPERM';
async function prober(): Promise<Prober> {
  const p = await Prober.start();
  ctx.probers.push(p);
  return p;
}
const gpus = (p: Prober) => Promise.all([0, 1].map((i) => p.open(gpu(i), 'rw')));
const where = async (p: Prober) => path.join(MOUNT, (await p.ask({ op: 'cgroup' })).r);

/** The request is refused with `code` and the scope's tree is exactly what it was. */
async function refused(t: any, op: string, args: object, code: string | RegExp): Promise<void> {
  const before = snapshotTree(ctx.scope);
  const err: any = await t.throwsAsync(ctx.c.request(op as any, args as any), undefined, `${op} ${JSON.stringify(args)}`);
  if (typeof code === 'string') t.is(err?.code, code, `${op} ${JSON.stringify(args)}: ${err?.message}`);
  else t.regex(err?.code ?? '', code, `${op} ${JSON.stringify(args)}: ${err?.message}`);
  t.deepEqual(snapshotTree(ctx.scope), before, `${op} ${JSON.stringify(args)} changed the tree`);
  ctx.checked++;
}

/** A pid that has exited and is not reaped (its parent, a sleep, never waits). */
async function zombie(): Promise<number> {
  // The child outlives the shell's own reaping: it exits after the shell became sleep, which never waits.
  const parent = spawn('sh', ['-c', 'sleep 0.2 & echo $!; exec sleep 600'], { stdio: ['ignore', 'pipe', 'ignore'] });
  ctx.kids.push(parent);
  const line: string = await new Promise((resolve) => readline.createInterface({ input: parent.stdout! }).once('line', resolve));
  const pid = Number(line);
  for (let i = 0; i < 500 && !/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8')); i++) await new Promise((r) => setTimeout(r, 10));
  if (!/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'))) throw new Error(`pid ${pid} did not become a zombie`);
  return pid;
}

/** A pid that no longer exists (a child that ran and was reaped). */
async function gonePid(): Promise<number> {
  const k = spawn('true');
  await new Promise((r) => k.once('exit', r));
  return k.pid!;
}

kt('task.place makes job, step and leaf in one request and moves the pid; the same placement again changes nothing', async (t) => {
  const p = await prober();
  const req = { job: '31', step: '0', pid: p.pid, task: 0, jobDevices: { gres: ['gpu:0', 'gpu:1'] }, stepDevices: { gres: ['gpu:1'] } };
  const r = await ctx.c.request('task.place', req);
  t.true(r.job.created);
  t.true(r.step.created);
  t.is(r.leaf, path.join(ctx.scope, 'job_31', 'step_0', 'user', 'task_0'));
  t.is(await where(p), r.leaf);
  t.deepEqual(await gpus(p), [D, A]);
  const before = snapshotTree(ctx.scope);
  const again = await ctx.c.request('task.place', { ...req, jobDevices: { gres: [] }, stepDevices: { gres: ['gpu:0'] } });
  t.false(again.job.created);
  t.false(again.step.created);
  t.deepEqual(snapshotTree(ctx.scope), before, 'an existing job and step are used as they are');
  // A second step of the same job, and the step daemon's leaf.
  const p2 = await prober();
  const s1 = await ctx.c.request('task.place', { job: '31', step: '1', pid: p2.pid, leaf: 'slurm' });
  t.false(s1.job.created);
  t.true(s1.step.created);
  t.is(await where(p2), path.join(ctx.scope, 'job_31', 'step_1', 'slurm'));
  await ctx.c.request('destroy', { job: '31', force: true });
});

kt("task.place with tasks places a step's tasks in one request, each in its own leaf, all or none", async (t) => {
  const [a, b, c] = [await prober(), await prober(), await prober()];
  const r = await ctx.c.request('task.place', { job: '62', step: '0', tasks: [0, 1, 2].map((i) => ({ task: i, pid: [a, b, c][i].pid })), jobDevices: { gres: ['gpu:1'] }, stepDevices: { gres: ['gpu:1'] } });
  t.true(r.job.created);
  t.true(r.step.created);
  const leaf = (i: number) => path.join(ctx.scope, 'job_62', 'step_0', 'user', `task_${i}`);
  t.deepEqual(r.tasks.map((x: any) => [x.task, x.pid, x.leaf]), [0, 1, 2].map((i) => [i, [a, b, c][i].pid, leaf(i)]));
  t.deepEqual(await Promise.all([a, b, c].map(where)), [0, 1, 2].map(leaf));
  t.deepEqual(await gpus(c), [D, A]);

  // All or none: task 1's leaf takes no process (it became an inner cgroup), so
  // task 0's pid, already moved into a new leaf, goes back to the step daemon's
  // leaf it came from and the new leaf is removed.
  const d = await prober();
  const e = await prober();
  await ctx.c.request('task.place', { job: '63', step: '0', pid: d.pid, leaf: 'slurm' });
  await ctx.c.request('task.place', { job: '63', step: '0', pid: e.pid, task: 1 });
  await ctx.c.request('task.place', { job: '63', step: '0', pid: e.pid, task: 3 }); // task_1 is left empty
  fs.mkdirSync(path.join(ctx.scope, 'job_63', 'step_0', 'user', 'task_1', 'x'));
  fs.writeFileSync(path.join(ctx.scope, 'job_63', 'step_0', 'user', 'task_1', 'cgroup.subtree_control'), '+hugetlb');
  const f = await prober();
  const fWas = await where(f);
  await refused(t, 'task.place', { job: '63', step: '0', tasks: [{ task: 0, pid: d.pid }, { task: 2, pid: f.pid }, { task: 1, pid: a.pid }] }, 'EBUSY');
  t.is(await where(d), path.join(ctx.scope, 'job_63', 'step_0', 'slurm'), 'moved back into the leaf it came from');
  t.is(await where(f), fWas, 'moved back out of the scope to where it was');
  t.is(await where(a), leaf(0), 'the pid the kernel refused stayed where it was');
  fs.rmdirSync(path.join(ctx.scope, 'job_63', 'step_0', 'user', 'task_1', 'x'));

  // A pid that cannot be moved refuses the whole request before anything is made.
  const gone = await gonePid();
  await refused(t, 'task.place', { job: '64', step: '0', tasks: [{ task: 0, pid: d.pid }, { task: 1, pid: gone }] }, 'ENOENT');
  await refused(t, 'task.place', { job: '64', step: '0', tasks: [{ task: 0, pid: d.pid }, { task: 1, pid: 2 }] }, 'EPERM');
  await refused(t, 'task.place', { job: '62', step: '0', tasks: [{ task: 0, pid: d.pid }, { task: 0, pid: f.pid }] }, 'EINVAL');
  await refused(t, 'task.place', { job: '62', step: '0', tasks: [{ task: 0, pid: d.pid }, { task: 1, pid: d.pid }] }, 'EINVAL');
  await refused(t, 'task.place', { job: '62', step: '0', pid: d.pid, tasks: [{ task: 0, pid: f.pid }] }, 'EINVAL');
  await refused(t, 'task.place', { job: '62', step: '0', leaf: 'slurm', tasks: [{ task: 0, pid: f.pid }] }, 'EINVAL');
  await refused(t, 'task.place', { job: '62', step: '0' }, 'EINVAL');
  await refused(t, 'task.place', { job: '62', step: '0', tasks: [] }, 'EINVAL');
  await refused(t, 'task.place', { job: '62', step: '0', tasks: Array.from({ length: 513 }, (_, i) => ({ task: i, pid: d.pid })) }, 'EINVAL');
  for (const j of ['62', '63']) await ctx.c.request('destroy', { job: j, force: true });
});

kt('every job gets the gres policy: none allocated, every GPU denied, whether or not the request names devices', async (t) => {
  const st = (await ctx.c.request('status', {})).devices;
  t.like(st, { supported: true, constrainDevices: true, everyJob: true, defaultPolicy: 'open' });
  // A job made by `cgstep run` with no device options cannot open a GPU.
  const run = ctx.agent.cli(['run', '40', '5', '--', 'head', '-c1', gpu(0)]);
  t.not(run.code, 0);
  t.regex(run.stderr, /Operation not permitted/);
  const allowed = ctx.agent.cli(['run', '41', '0', '--gres', 'gpu:1', '--', 'sh', '-c', `head -c1 ${gpu(1)}; head -c1 ${gpu(0)}`]);
  t.regex(allowed.stderr, new RegExp(`${gpu(1)}.*No such device or address`));
  t.regex(allowed.stderr, new RegExp(`${gpu(0)}.*Operation not permitted`));

  await ctx.c.request('job.create', { job: '42' });
  await ctx.c.request('step.create', { job: '42', step: '0' });
  const p = await prober();
  await ctx.c.request('attach', { job: '42', step: '0', pid: p.pid, task: 0 });
  t.deepEqual(await gpus(p), [D, D], 'a job made with no gres gets none');
  await refused(t, 'step.create', { job: '42', step: '1', devices: { gres: ['gpu:0'] } }, 'EPERM');
  await refused(t, 'devices.set', { job: '42', step: '0', devices: { gres: ['gpu:0'] } }, 'EPERM');
  // Widened by root at the job level first, the step may have it.
  await ctx.c.request('devices.set', { job: '42', devices: { gres: ['gpu:0'] } });
  await ctx.c.request('devices.set', { job: '42', step: '0', devices: { gres: ['gpu:0'] } });
  t.deepEqual(await gpus(p), [A, D]);
  for (const j of ['40', '41', '42']) await ctx.c.request('destroy', { job: j, force: true });
});

kt("task.place from root widens an existing job's GPU allocation by its jobDevices (a step daemon's first request); the job's other steps keep theirs", async (t) => {
  const p = await prober();
  const q = await prober();
  await ctx.c.request('task.place', { job: '95', step: '0', pid: p.pid, task: 0, jobDevices: { gres: ['gpu:0'] }, stepDevices: { gres: ['gpu:0'] } });
  t.deepEqual(await gpus(p), [A, D]);
  await refused(t, 'task.place', { job: '95', step: '1', pid: q.pid, task: 0, stepDevices: { gres: ['gpu:1'] } }, 'EPERM');
  const r = await ctx.c.request('task.place', { job: '95', step: '1', pid: q.pid, task: 0, jobDevices: { gres: ['gpu:1'] }, stepDevices: { gres: ['gpu:1'] } });
  t.is(typeof r.job.deviceProgram, 'number', 'a new job program');
  t.deepEqual(await gpus(q), [D, A]);
  t.deepEqual(await gpus(p), [A, D], 'step 0 keeps its own');
  // Within the allocation now: nothing changes at the job level.
  const same = await ctx.c.request('task.place', { job: '95', step: '2', pid: q.pid, task: 0, jobDevices: { gres: ['gpu:0', 'gpu:1'] }, stepDevices: { gres: ['gpu:0', 'gpu:1'] } });
  t.is(same.job.deviceProgram, undefined);
  t.deepEqual(await gpus(q), [A, A]);
  await ctx.c.request('destroy', { job: '95', force: true });
});

kt('refused requests leave the tree exactly as before', async (t) => {
  const p = await prober();
  await ctx.c.request('task.place', { job: '80', step: '0', pid: p.pid, task: 0, jobDevices: { gres: ['gpu:0'] }, stepDevices: { gres: ['gpu:0'] } });
  const q = await prober();
  const z = await zombie();
  const gone = await gonePid();
  const n0 = ctx.checked;
  await refused(t, 'job.create', { job: '77', limits: { memory: 2 ** 30 } }, 'ENOTSUP');
  await refused(t, 'job.create', { job: '77', limits: { cpus: '0' } }, 'ENOTSUP');
  await refused(t, 'job.create', { job: '80', limits: { pids: 10 } }, 'ENOTSUP');
  await refused(t, 'job.create', { job: '77', devices: { gres: ['gpu:5'] } }, 'EINVAL');
  await refused(t, 'step.create', { job: '78', step: '0', devices: { gres: ['gpu:5'] } }, 'EINVAL');
  await refused(t, 'step.create', { job: '78', step: '0', devices: { allow: ['x 1:3 r'] } }, 'EINVAL');
  await refused(t, 'step.create', { job: '78', step: '0', limits: { memory: 2 ** 30 } }, 'ENOTSUP');
  await refused(t, 'step.create', { job: '80', step: '1', devices: { gres: ['gpu:1'] } }, 'EPERM');
  await refused(t, 'step.create', { job: '80', step: '1', devices: { deny: ['/nonexistent/dev'] } }, 'ENOENT');
  await refused(t, 'attach', { job: '80', step: '0', pid: gone, task: 3 }, 'ENOENT');
  await refused(t, 'attach', { job: '80', step: '0', pid: z, task: 3 }, 'ENOENT');
  await refused(t, 'attach', { job: '80', step: '0', pid: 2, task: 3 }, /EINVAL|EPERM/);
  await refused(t, 'attach', { job: '80', step: '0', pid: q.pid, task: 3, devices: { gres: ['gpu:7'] } }, 'EINVAL');
  await refused(t, 'attach', { job: '80', step: '9', pid: q.pid, task: 0 }, 'ENOENT');
  await refused(t, 'task.place', { job: '81', step: '0', pid: gone, task: 0 }, 'ENOENT');
  await refused(t, 'task.place', { job: '81', step: '0', pid: z, task: 0 }, 'ENOENT');
  await refused(t, 'task.place', { job: '81', step: '0', pid: q.pid, jobLimits: { memory: 2 ** 30 } }, 'ENOTSUP');
  await refused(t, 'task.place', { job: '81', step: '0', pid: q.pid, stepLimits: { cpus: '0' } }, 'ENOTSUP');
  await refused(t, 'task.place', { job: '81', step: '0', pid: q.pid, jobDevices: { gres: ['gpu:0'] }, stepDevices: { gres: ['gpu:1'] } }, 'EPERM');
  await refused(t, 'task.place', { job: '81', step: '0', pid: q.pid, devices: { allow: ['c 1:3 rwx'] } }, 'EINVAL');
  await refused(t, 'task.place', { job: '80', step: '2', pid: q.pid, stepDevices: { gres: ['gpu:1'] } }, 'EPERM');
  await refused(t, 'devices.set', { job: '80', step: '0', devices: { gres: ['gpu:1'] } }, 'EPERM');
  t.log(`${ctx.checked - n0} refused requests left the tree unchanged`);
  t.deepEqual(await gpus(p), [A, D]);
  await ctx.c.request('destroy', { job: '80', force: true });
});

kt('a request the kernel refuses part-way is taken back: directories made, programs replaced', async (t) => {
  const depth = path.join(ctx.scope, 'cgroup.max.depth');
  const desc = path.join(ctx.scope, 'cgroup.max.descendants');
  const q = await prober();
  t.teardown(() => {
    fs.writeFileSync(depth, 'max');
    fs.writeFileSync(desc, 'max');
  });
  // job (1), step (2), user/ and slurm/ (3): the task leaf (4) is refused after the
  // job and step were made and the job's device program attached.
  fs.writeFileSync(depth, '3');
  await refused(t, 'task.place', { job: '90', step: '0', pid: q.pid, task: 0, jobDevices: { gres: ['gpu:0'] } }, 'EIO');
  t.false(fs.existsSync(path.join(ctx.scope, 'job_90')));
  fs.writeFileSync(depth, 'max');
  // Room for the job, the step and slurm/ only: user/ is refused.
  const count = (d: string): number => fs.readdirSync(d, { withFileTypes: true }).filter((e) => e.isDirectory()).reduce((n, e) => n + 1 + count(path.join(d, e.name)), 0);
  fs.writeFileSync(desc, String(count(ctx.scope) + 3));
  await refused(t, 'step.create', { job: '91', step: '0', devices: { gres: ['gpu:1'] } }, 'EIO');
  fs.writeFileSync(desc, 'max');

  // A leaf that became an inner cgroup (a child with a controller enabled) takes
  // no process (EBUSY) after the request replaced its device program: the old
  // program (the same id) and policy are put back.
  const p = await prober();
  await ctx.c.request('task.place', { job: '92', step: '0', pid: p.pid, task: 0, jobDevices: { gres: ['gpu:0', 'gpu:1'] }, devices: { gres: ['gpu:0'] } });
  await ctx.c.request('attach', { job: '92', step: '0', pid: p.pid, task: 1 });
  const task0 = path.join(ctx.scope, 'job_92', 'step_0', 'user', 'task_0');
  fs.mkdirSync(path.join(task0, 'x'));
  fs.writeFileSync(path.join(task0, 'cgroup.subtree_control'), '+hugetlb');
  await refused(t, 'attach', { job: '92', step: '0', pid: q.pid, task: 0, devices: { gres: ['gpu:1'] } }, 'EBUSY');
  fs.rmdirSync(path.join(task0, 'x'));
  await ctx.c.request('destroy', { job: '92', force: true });
});

test.after(() => {
  if (!skip) console.log(`place.test: ${ctx.checked} refused requests checked to leave the tree unchanged`);
});
