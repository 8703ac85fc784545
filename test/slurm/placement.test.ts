/**
 * A real Slurm (slurmctld + slurmd 22.05, munge, loopback) with the cgstep
 * SPANK plugin and a real cgstepd: where jobs, steps and tasks land, and that
 * they are gone when the job ends, escaped processes and scancel included.
 */
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { alive, cgroupLines, nodeSuite, procsOf, sleep, until } from './helpers.js';

const { test: slurmTest, node } = nodeSuite(import.meta.url, { name: 'placement', tolerateNoDevices: true }, (n, t) => t.log(`cluster up in ${n.cluster.startupMs} ms; scope ${n.scopeRel}`));

const jobDirs = () => fs.readdirSync(node().scope).filter((n) => n.startsWith('job_'));

async function gone(dir: string): Promise<void> {
  await until(() => !fs.existsSync(dir), 15_000, `${dir} to be removed`);
}

slurmTest('srun -n2: task_0 and task_1 of job_<id>/step_0 under the scope, the step daemon in slurm/, all removed afterwards', async (t) => {
  const r = await node().cluster.srun(['-n2', 'cat', '/proc/self/cgroup']);
  t.is(r.code, 0, r.stderr);
  const lines = cgroupLines(r.stdout).sort();
  t.is(lines.length, 2, r.stdout);
  const m = lines.map((l) => l.match(/^(.*)\/job_(\d+)\/step_0\/user\/task_(\d+)$/));
  t.truthy(m[0] && m[1], lines.join('\n'));
  t.is(m[0]![1], node().scopeRel);
  t.is(m[0]![2], m[1]![2], 'both tasks in one job');
  t.deepEqual([m[0]![3], m[1]![3]], ['0', '1']);
  await gone(node().jobDir(m[0]![2]));

  // The step daemon (the tasks' parent) sits in the step's slurm/ leaf while the step runs.
  const r2 = await node().cluster.srun(['-n1', 'sh', '-c', 'grep ^0:: /proc/$PPID/cgroup; grep ^0:: /proc/self/cgroup']);
  t.is(r2.code, 0, r2.stderr);
  const [stepd, task] = cgroupLines(r2.stdout);
  const job = task.match(/job_(\d+)/)![1];
  t.is(stepd, `${node().scopeRel}/job_${job}/step_0/slurm`);
  t.is(task, `${node().scopeRel}/job_${job}/step_0/user/task_0`);
  await gone(node().jobDir(job));
});

slurmTest('sbatch: the batch script in step_batch/user/task_0; two sruns in it are step_0 and step_1; the job goes with its last step', async (t) => {
  const { job, out, err } = await node().cluster.sbatch(
    [
      '#!/bin/sh',
      'grep ^0:: /proc/self/cgroup',
      'srun -n1 grep ^0:: /proc/self/cgroup',
      'srun -n1 grep ^0:: /proc/self/cgroup',
      // srun returns when its tasks end; the step daemon removes the step just after (spank exit): allow it 5 s.
      // A step going away while ls reads the glob is not an error here.
      `steps() { ls -d ${node().scope}/job_$SLURM_JOB_ID/step_* 2>/dev/null; }`,
      'i=0; while [ "$(steps | wc -l)" -gt 1 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done',
      'steps',
      '',
    ].join('\n'),
  );
  await node().cluster.waitJobDone(job);
  await gone(node().jobDir(job));
  const output = fs.readFileSync(out, 'utf8');
  t.is(fs.readFileSync(err, 'utf8'), '', 'nothing on stderr');
  t.deepEqual(cgroupLines(output), [
    `${node().scopeRel}/job_${job}/step_batch/user/task_0`,
    `${node().scopeRel}/job_${job}/step_0/user/task_0`,
    `${node().scopeRel}/job_${job}/step_1/user/task_0`,
  ]);
  // Each srun's step was removed when it ended (within 5 s, while the batch step still ran): its own step was the only one left.
  t.deepEqual(
    output.split('\n').filter((l) => l.startsWith('/')),
    [path.join(node().jobDir(job), 'step_batch')],
  );
});

slurmTest('a process that escaped with setsid is killed and the job removed when the step ends (srun and sbatch)', async (t) => {
  const pidFile = path.join(node().cluster.dir, 'escaped.pid');
  const escape = `setsid sh -c 'echo $$ > ${pidFile}; exec sleep 300' </dev/null >/dev/null 2>&1 & sleep 0.3`;
  const r = await node().cluster.srun(['-n1', 'sh', '-c', `${escape}; grep ^0:: /proc/self/cgroup`]);
  t.is(r.code, 0, r.stderr);
  const job = cgroupLines(r.stdout)[0].match(/job_(\d+)/)![1];
  const pid = Number(fs.readFileSync(pidFile, 'utf8'));
  t.true(pid > 0);
  await gone(node().jobDir(job));
  await until(() => !alive(pid), 5000, `escaped pid ${pid} to die`);
  t.false(alive(pid));

  fs.rmSync(pidFile);
  const b = await node().cluster.sbatch(`#!/bin/sh\n${escape}\n`);
  await node().cluster.waitJobDone(b.job);
  await gone(node().jobDir(b.job));
  const pid2 = Number(fs.readFileSync(pidFile, 'utf8'));
  await until(() => !alive(pid2), 5000, `escaped pid ${pid2} to die`);
  t.false(alive(pid2));
  t.deepEqual(jobDirs(), []);
});

slurmTest('scancel of a running job: its tasks die and its cgroups are removed', async (t) => {
  const srun = spawn('srun', ['-n2', 'sleep', '300'], { env: node().cluster.env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  srun.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise<number | null>((resolve) => srun.on('close', (code) => resolve(code)));
  try {
    let job = '';
    await until(
      () => {
        const dirs = jobDirs();
        if (dirs.length !== 1) return false;
        job = dirs[0].slice(4);
        const user = path.join(node().stepDir(job, '0'), 'user');
        // Task 0 places slurmstepd in slurm/ after itself: wait for that too.
        const daemon = procsOf(path.join(node().stepDir(job, '0'), 'slurm')).length > 0;
        return daemon && procsOf(path.join(user, 'task_0')).length > 0 && procsOf(path.join(user, 'task_1')).length > 0;
      },
      20_000,
      () => `two tasks and the step daemon in the tree (${stderr})`,
    );
    const user = path.join(node().stepDir(job, '0'), 'user');
    const pids = [...procsOf(path.join(user, 'task_0')), ...procsOf(path.join(user, 'task_1'))];
    t.is(pids.length, 2);
    t.true(procsOf(path.join(node().stepDir(job, '0'), 'slurm')).length > 0, 'slurmstepd in slurm/');
    const c = await node().cluster.scancel(Number(job));
    t.is(c.code, 0, c.stderr);
    await exited;
    await gone(node().jobDir(job));
    for (const pid of pids) t.false(alive(pid), `task pid ${pid} is dead`);
    t.deepEqual(jobDirs(), []);
  } finally {
    if (srun.exitCode === null) srun.kill('SIGKILL');
    await sleep(0);
  }
});
