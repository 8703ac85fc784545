/**
 * The extern step (PrologFlags=contain) with a real Slurm, the cgstep SPANK
 * plugin and a real cgstepd: Slurm runs no task callbacks for it, so the
 * plugin places it from slurm_spank_init: step_extern with its slurmstepd
 * and the process holding the step open in slurm/; removed with the job.
 */
import fs from 'node:fs';
import path from 'node:path';
import { alive, cgroupLines, nodeSuite, procsOf, until } from './helpers.js';

const { test: slurmTest, node } = nodeSuite(import.meta.url, { name: 'extern', tolerateNoDevices: true, extraConf: ['PrologFlags=contain'] });

const cmdline = (pid: number) => {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ').trim();
  } catch {
    return '';
  }
};

slurmTest('srun with PrologFlags=contain: step_extern holds its slurmstepd and the sleep that keeps it; step_0 as usual; all removed with the job', async (t) => {
  const r = await node().cluster.srun(['-n1', 'sh', '-c', 'grep ^0:: /proc/self/cgroup; echo $SLURM_JOB_ID; sleep 0.3']);
  t.is(r.code, 0, r.stderr);
  const [task] = cgroupLines(r.stdout);
  const job = r.stdout.trim().split('\n')[1];
  t.is(task, `${node().scopeRel}/job_${job}/step_0/user/task_0`);
  await until(() => !fs.existsSync(node().jobDir(job)), 15_000, `job ${job} to be removed`);

  // While a job runs: what is in its extern step.
  const marker = path.join(node().cluster.dir, 'extern-go');
  const b = await node().cluster.sbatch(`#!/bin/sh\nwhile [ ! -e ${marker} ]; do sleep 0.05; done\n`);
  const slurmLeaf = path.join(node().stepDir(b.job, 'extern'), 'slurm');
  // The extern slurmstepd forks the process that keeps the step open; until
  // that child has exec'd sleep it still reads as a second slurmstepd, so
  // wait for the pair rather than for a count (a count raced that window).
  const externProcs = () => procsOf(slurmLeaf).map(cmdline);
  const daemonAndSleep = (procs: string[]) => procs.some((c) => c.startsWith(`slurmstepd: [${b.job}.extern]`)) && procs.some((c) => c.startsWith('sleep '));
  await until(() => daemonAndSleep(externProcs()), 20_000, () => `the extern step daemon and its sleep in ${slurmLeaf} (now: ${externProcs().join(' | ') || 'nothing'})`);
  t.true(daemonAndSleep(externProcs()), externProcs().join(' | '));
  const pids = procsOf(slurmLeaf);
  await until(() => procsOf(path.join(node().stepDir(b.job, 'batch'), 'user', 'task_0')).length > 0, 20_000, 'the batch script in its task');
  fs.writeFileSync(marker, '');
  await node().cluster.waitJobDone(b.job);
  await until(() => !fs.existsSync(node().jobDir(b.job)), 15_000, `job ${b.job} to be removed`);
  await until(() => pids.every((p) => !alive(p)), 5000, 'the extern processes to end');
  t.deepEqual(fs.readdirSync(node().scope).filter((n) => n.startsWith('job_')), []);
});
