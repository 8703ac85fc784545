/**
 * GPU confinement from gres with a real Slurm, the cgstep SPANK plugin and a
 * real cgstepd: four fake GPUs (c 195:0..3, listed in gres.conf, node
 * Gres=gpu:4). An allocated GPU opens with ENXIO (allowed; no driver), the
 * others give EPERM (denied by the device program), and without --gres all
 * four are denied, whatever the user exports. The confinement of a running
 * job holds while cgstepd is down and after it restarts. Needs the agent's
 * device control (devices/ebpf): without it these tests fail, saying so.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { PROBE, PYTHON, nodeSuite, parseProbes, until, type ProbeResult } from './helpers.js';

const { test: slurmTest, node } = nodeSuite(import.meta.url, { name: 'devices' }, (n, t) => t.log(`cluster up in ${n.cluster.startupMs} ms`));

test.beforeEach((t) => {
  if (node()?.devicesUnsupported) t.fail(`cgstepd cannot confine devices here: ${node().devicesUnsupported}`);
});

const probeArgs = () => [PYTHON, PROBE, ...node().cluster.gpus, '/dev/null'];

/** The allocated GPU indices a task saw (CUDA_VISIBLE_DEVICES), and what each GPU open gave. */
function check(t: import('ava').ExecutionContext, p: ProbeResult, allowed: number[]) {
  const gpus = node().cluster.gpus;
  t.deepEqual(
    gpus.map((g) => p.open[g]),
    gpus.map((_, i) => (allowed.includes(i) ? 'ENXIO' : 'EPERM')),
    `GPUs ${JSON.stringify(allowed)} allowed, the rest denied (${JSON.stringify(p)})`,
  );
  t.is(p.open['/dev/null'], 'OK', 'other devices stay allowed');
}

const visible = (p: ProbeResult) => (p.env.CUDA_VISIBLE_DEVICES ?? '').split(',').filter(Boolean).map(Number);

slurmTest('srun --gres=gpu:1: its GPU opens (ENXIO), the other three are EPERM', async (t) => {
  const r = await node().cluster.srun(['-n1', '--gres=gpu:1', ...probeArgs()]);
  t.is(r.code, 0, r.stderr);
  const [p] = parseProbes(r.stdout);
  t.is(visible(p).length, 1);
  check(t, p, visible(p));
  t.regex(p.cgroup, /\/job_\d+\/step_0\/user\/task_0$/);
});

slurmTest('srun without --gres: all four GPUs EPERM, even with CUDA_VISIBLE_DEVICES/SLURM_STEP_GPUS exported by the user', async (t) => {
  for (const extra of [[], ['--export=ALL,CUDA_VISIBLE_DEVICES=0,1,2,3,SLURM_STEP_GPUS=0,1,2,3']]) {
    const r = await node().cluster.srun(['-n1', ...extra, ...probeArgs()]);
    t.is(r.code, 0, r.stderr);
    const [p] = parseProbes(r.stdout);
    check(t, p, []);
  }
});

slurmTest('srun -n2 --gres=gpu:2: both tasks get the same two GPUs', async (t) => {
  const r = await node().cluster.srun(['-n2', '--gres=gpu:2', ...probeArgs()]);
  t.is(r.code, 0, r.stderr);
  const ps = parseProbes(r.stdout);
  t.is(ps.length, 2);
  for (const p of ps) {
    t.is(visible(p).length, 2);
    check(t, p, visible(p));
  }
});

slurmTest('sbatch --gres=gpu:1: the batch script gets its GPU only; the job keeps its confinement while cgstepd is down and after it restarts', async (t) => {
  const dir = node().cluster.dir;
  const go1 = path.join(dir, 'dev-go1');
  const go2 = path.join(dir, 'dev-go2');
  const probe = probeArgs().join(' ');
  const b = await node().cluster.sbatch(
    ['#!/bin/sh', probe, `while [ ! -e ${go1} ]; do sleep 0.05; done`, probe, `while [ ! -e ${go2} ]; do sleep 0.05; done`, probe, ''].join('\n'),
    ['--gres=gpu:1'],
  );
  const probes = () => (fs.existsSync(b.out) ? parseProbes(fs.readFileSync(b.out, 'utf8')) : []);
  await until(() => probes().length >= 1, 30_000, () => `the first probe (${fs.existsSync(b.err) ? fs.readFileSync(b.err, 'utf8') : ''})`);
  const [first] = probes();
  const mine = visible(first);
  t.is(mine.length, 1);
  check(t, first, mine);

  await node().stopAgent();
  try {
    fs.writeFileSync(go1, '');
    await until(() => probes().length >= 2, 15_000, 'the probe during the outage');
    check(t, probes()[1], mine);
  } finally {
    await node().startAgent();
  }
  fs.writeFileSync(go2, '');
  await node().cluster.waitJobDone(b.job);
  const all = probes();
  t.is(all.length, 3, fs.readFileSync(b.err, 'utf8'));
  check(t, all[2], mine);
  t.is(all[2].cgroup, first.cgroup, 'same task cgroup throughout');
  await until(() => !fs.existsSync(node().jobDir(b.job)), 15_000, 'the job to be removed');
});
