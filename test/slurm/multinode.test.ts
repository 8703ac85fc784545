/**
 * Two Slurm nodes on this one machine (test/harness/slurm-multi.ts), each a
 * slurmd in its own namespaces with its own cgstepd and cgroup root: a step
 * across both nodes places every task through its own node's agent, and both
 * nodes' trees go when the step ends or the job is cancelled. With
 * CGSTEP_RESULTS=1 it writes what it saw to bench/results-multinode.json (the
 * benchmark's record); a plain test run leaves the tree as it found it.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { REPO } from '../harness/slurm.js';
import { multiNodeSupport, startMultiSlurm, type MultiCluster, type SlurmNode } from '../harness/slurm-multi.js';
import { gate } from '../helpers/gate.js';
import { alive, procsOf, until } from './helpers.js';

const RESULT = path.join(REPO, 'bench/results-multinode.json');
const { ok, test: slurmTest } = gate('Slurm on two nodes', multiNodeSupport(), import.meta.url);

let cluster: MultiCluster | undefined;
const c = () => cluster as MultiCluster;
const detail: Record<string, unknown> = { date: new Date().toISOString(), kernel: os.release() };
const passed: Record<string, boolean> = {};

test.before(async (t) => {
  if (!ok) return;
  try {
    cluster = await startMultiSlurm({ name: 'mnode', tolerateNoDevices: true });
  } catch (err) {
    detail.error = String(err);
    throw err;
  }
  detail.startupMs = cluster.startupMs;
  detail.nodes = cluster.nodes.map((n) => ({ name: n.name, addr: n.addr, scope: path.relative(n.root, n.scope) }));
  detail.devices = cluster.devicesUnsupported ? `devices=try (${cluster.devicesUnsupported})` : 'enforced';
  t.log(`2 nodes up in ${cluster.startupMs} ms: ${cluster.nodes.map((n) => `${n.name}@${n.addr} ${n.scopeRel}`).join(', ')}`);
});

test.afterEach.always((t) => {
  passed[t.title.replace(/^afterEach\.always hook for /, '')] = t.passed;
});

test.after.always(async () => {
  await cluster?.stop();
  if (!ok) return; // nothing ran: keep the last real run's result
  const placedTitle = Object.keys(passed).find((k) => k.startsWith('srun -N2 -n4'));
  const scancelTitle = Object.keys(passed).find((k) => k.startsWith('scancel'));
  detail.scancelRemovedBoth = scancelTitle ? passed[scancelTitle] : false;
  const result = { nodes: 2, placed: placedTitle ? passed[placedTitle] : false, detail };
  if (process.env.CGSTEP_RESULTS === '1') fs.writeFileSync(RESULT, `${JSON.stringify(result, null, 2)}\n`);
});

const jobsOn = (n: SlurmNode) => fs.readdirSync(n.scope).filter((e) => e.startsWith('job_'));
const gone = (dir: string) => until(() => !fs.existsSync(dir), 15_000, `${dir} to be removed`);

slurmTest('srun -N2 -n4: two tasks on each node, each in its own node\'s tree (placed by that node\'s cgstepd); the job goes on both nodes', async (t) => {
  const r = await c().srun(['-N2', '-n4', 'sh', '-c', 'echo "$(hostname) $SLURM_PROCID $(grep ^0:: /proc/self/cgroup)"']);
  t.is(r.code, 0, r.stderr);
  const tasks = r.stdout
    .trim()
    .split('\n')
    .map((l) => {
      const [host, task, cgroup] = l.split(' ');
      return { host, task: Number(task), cgroup: cgroup?.slice(3) ?? '' };
    })
    .sort((a, b) => a.task - b.task);
  // Recorded relative to each node's cgroup root (its random name left out).
  const inRoot = (x: (typeof tasks)[number]) => {
    const root = c().nodes.find((n) => n.name === x.host)?.rootRel;
    return root && x.cgroup.startsWith(`${root}/`) ? x.cgroup.slice(root.length + 1) : x.cgroup;
  };
  detail.srun = { args: '-N2 -n4', ms: Math.round(r.ms), tasks: tasks.map((x) => ({ ...x, cgroup: inRoot(x) })) };
  t.deepEqual(
    tasks.map((x) => x.task),
    [0, 1, 2, 3],
    r.stdout,
  );
  const job = tasks[0]?.cgroup.match(/\/job_(\d+)\//)?.[1];
  t.truthy(job, r.stdout);
  for (const x of tasks) {
    const node = c().nodes.find((n) => n.name === x.host);
    t.truthy(node, `task ${x.task} ran on ${x.host}, not one of the cluster's nodes`);
    if (node) t.is(x.cgroup, `${node.scopeRel}/job_${job}/step_0/user/task_${x.task}`, `task ${x.task} on ${x.host}`);
  }
  for (const n of c().nodes) t.is(tasks.filter((x) => x.host === n.name).length, 2, `two tasks on ${n.name}`);

  const t0 = performance.now();
  for (const n of c().nodes) await gone(n.jobDir(job!));
  detail.removedBothMs = Math.round(performance.now() - t0);
  for (const n of c().nodes) t.deepEqual(jobsOn(n), [], `nothing left under ${n.scope}`);
});

slurmTest('scancel of a running two-node job: its tasks die and both nodes\' trees are removed', async (t) => {
  const srun = spawn('srun', ['-N2', '-n4', 'sleep', '300'], { env: c().env, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  srun.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise<void>((resolve) => srun.on('close', () => resolve()));
  t.teardown(() => {
    if (srun.exitCode === null && srun.signalCode === null) srun.kill('SIGKILL');
  });
  let job = '';
  const taskDirs = (n: SlurmNode) => ['task_0', 'task_1', 'task_2', 'task_3'].map((x) => path.join(n.stepDir(job, '0'), 'user', x));
  await until(
    () => {
      const jobs = c().nodes.map(jobsOn);
      if (jobs.some((j) => j.length !== 1) || jobs[0][0] !== jobs[1][0]) return false;
      job = jobs[0][0].slice(4);
      // Each node's first local task also puts that node's step daemon in the step's slurm/ leaf.
      return c().nodes.every((n) => taskDirs(n).filter((d) => procsOf(d).length > 0).length === 2 && procsOf(path.join(n.stepDir(job, '0'), 'slurm')).length > 0);
    },
    20_000,
    () => `two running tasks and the step daemon on each node (${stderr})`,
  );
  const pids = c().nodes.flatMap((n) => taskDirs(n).flatMap(procsOf));
  t.is(pids.length, 4);
  const cancel = await c().scancel(job);
  t.is(cancel.code, 0, cancel.stderr);
  await exited;
  const t0 = performance.now();
  for (const n of c().nodes) await gone(n.jobDir(job));
  detail.scancelRemovedMs = Math.round(performance.now() - t0);
  for (const pid of pids) t.false(alive(pid), `task pid ${pid} is dead`);
  for (const n of c().nodes) t.deepEqual(jobsOn(n), [], `nothing left under ${n.scope}`);
});
