/**
 * The plugin's failure policy with a real Slurm: cgstepd stopped, mute, or
 * refusing makes a new task fail closed with the plugin's message in srun's
 * stderr (the command never runs); failure=open runs it unconfined; a
 * restarted cgstepd takes new steps again and the steps that ran through the
 * outage keep their cgroups and are removed when they end.
 */
import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { startAgent } from '../helpers/agent.js';
import { alive, cgroupLines, lineServer, nodeSuite, procsOf, until } from './helpers.js';

let baseArgs: string[] = [];
const { test: slurmTest, node } = nodeSuite(import.meta.url, { name: 'failure', tolerateNoDevices: true }, (n, t) => {
  baseArgs = n.devicesUnsupported ? ['devices=try'] : [];
  t.log(`cluster up in ${n.cluster.startupMs} ms`);
});

// A test that failed half-way may have left the agent stopped (or stopped by
// SIGSTOP), or a job behind: start each test from an idle node.
test.beforeEach(async () => {
  const n = node();
  if (!n) return;
  n.cluster.setPluginArgs(baseArgs);
  await n.ensureAgent();
  await n.cluster.waitIdle();
});

const jobDirs = () => fs.readdirSync(node().scope).filter((n) => n.startsWith('job_'));

/** srun a command that touches a marker first: proves whether the command ran at all. */
async function srunMarked(extra: string[] = []) {
  const marker = path.join(node().cluster.dir, `ran-${Date.now()}-${Math.random().toString(36).slice(2)}`);
  const r = await node().cluster.srun(['-n1', ...extra, 'sh', '-c', `touch ${marker}; grep ^0:: /proc/self/cgroup`]);
  return { ...r, ran: fs.existsSync(marker) };
}

slurmTest('cgstepd stopped: a new srun fails closed with the plugin message; restarted: sruns work and a step that ran through the outage kept its cgroup', async (t) => {
  // A step that runs across the agent's stop and restart, waiting for a go file.
  const go = path.join(node().cluster.dir, 'go');
  const long = spawn('srun', ['-n1', 'sh', '-c', `while [ ! -e ${go} ]; do sleep 0.05; done; grep ^0:: /proc/self/cgroup`], {
    env: node().cluster.env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  long.stdout.on('data', (d) => (out += d));
  long.stderr.on('data', (d) => (err += d));
  const longDone = new Promise<number | null>((resolve) => long.on('close', (code) => resolve(code)));
  try {
    let job = '';
    await until(
      () => {
        const d = jobDirs();
        if (d.length !== 1) return false;
        job = d[0].slice(4);
        return procsOf(path.join(node().stepDir(job, '0'), 'user/task_0')).length > 0;
      },
      20_000,
      () => `the long step's task (${err})`,
    );
    const taskDir = path.join(node().stepDir(job, '0'), 'user/task_0');
    // The task's shell, once it has exec'd (its loop's sleeps come and go).
    const cmdline = (p: number) => {
      try {
        return fs.readFileSync(`/proc/${p}/cmdline`, 'utf8');
      } catch {
        return '';
      }
    };
    let shell = 0;
    await until(() => (shell = procsOf(taskDir).find((p) => /^(\/usr)?(\/bin\/)?sh\0/.test(cmdline(p))) ?? 0) > 0, 10_000, 'the task to exec sh');

    await node().stopAgent();
    t.false(fs.existsSync(node().socket), 'socket removed by the stopping agent');
    const down = await srunMarked();
    t.not(down.code, 0);
    t.false(down.ran, 'the command never ran');
    t.regex(
      down.stderr,
      new RegExp(`cgstep: placing the task for job \\d+ step 0 failed \\(cgstepd at ${node().socket.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: cannot connect: No such file or directory \\(is cgstepd running\\?\\)\\); task not started \\(failure=closed\\)`),
    );
    t.log(down.stderr.trim());
    // The running step did not notice.
    t.true(procsOf(taskDir).includes(shell));
    t.true(alive(shell));

    await node().startAgent();
    const up = await srunMarked();
    t.is(up.code, 0, up.stderr);
    t.true(up.ran);
    const upJob = cgroupLines(up.stdout)[0].match(/job_(\d+)\/step_0\/user\/task_0$/);
    t.truthy(upJob, up.stdout);
    await until(() => !fs.existsSync(node().jobDir(upJob![1])), 15_000, 'the new job to be removed');

    // The long step: still in its task cgroup, and removed by the new agent when it ends.
    t.true(procsOf(taskDir).includes(shell));
    fs.writeFileSync(go, '');
    t.is(await longDone, 0, err);
    t.deepEqual(cgroupLines(out), [`${node().scopeRel}/job_${job}/step_0/user/task_0`]);
    await until(() => !fs.existsSync(node().jobDir(job)), 15_000, 'the long job to be removed');
    t.deepEqual(jobDirs(), []);
  } finally {
    if (long.exitCode === null) long.kill('SIGKILL');
  }
});

slurmTest('cgstepd mute (SIGSTOP): the task fails closed after timeout_ms with "no reply"', async (t) => {
  node().cluster.setPluginArgs([...baseArgs, 'timeout_ms=700']);
  process.kill(node().agent.pid, 'SIGSTOP');
  let r;
  try {
    r = await srunMarked();
  } finally {
    process.kill(node().agent.pid, 'SIGCONT');
    node().cluster.setPluginArgs(baseArgs);
  }
  t.not(r.code, 0);
  t.false(r.ran);
  t.regex(r.stderr, /cgstep: creating the step's cgroup for job \d+ step 0 failed \(cgstepd at .*: no reply within 700 ms\); tasks killed before exec \(failure=closed\)/);
  // The agent carries out the task.place it got while stopped only now, after the
  // plugin gave up on it. The step daemon sent no destroy (had that late request
  // moved it into the step, the destroy would have killed it); the job epilog's
  // destroy removes whatever the request made.
  const job = r.stderr.match(/for job (\d+) step 0/)![1];
  const c = await node().agent.client();
  await c.request('hello', {}); // answered after every request read while stopped
  c.close();
  await until(() => !fs.existsSync(node().jobDir(job)), 15_000, `job ${job} to be removed by the epilog`);
  t.deepEqual(jobDirs(), []);
  const ok = await srunMarked();
  t.is(ok.code, 0, ok.stderr);
});

slurmTest('an agent that refuses: its error code and message are in the job stderr, the command never runs', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-refuser-'));
  const sock = path.join(dir, 'refuser.sock');
  const seen: string[] = [];
  const server = await lineServer(sock, (line, s) => {
    seen.push(line);
    const req = JSON.parse(line);
    // Escapes and a non-ASCII character must survive the plugin's reader.
    s.write(JSON.stringify({ id: req.id, ok: false, error: { code: 'EBUSY', message: 'node "draining" \\ try later \u2013 tab\there', detail: { nested: [1, { a: null }] } } }) + '\n');
  });
  node().cluster.setPluginArgs([...baseArgs, `socket=${sock}`]);
  try {
    const r = await srunMarked();
    t.not(r.code, 0);
    t.false(r.ran);
    t.regex(r.stderr, /cgstep: creating the step's cgroup for job \d+ step 0 failed \(cgstepd at .*refuser\.sock: EBUSY: node "draining" \\ try later \u2013 tab\there\); tasks killed before exec \(failure=closed\)/);
    // The step daemon's task.place is the first request (no prolog request).
    const [first] = seen.map((l) => JSON.parse(l));
    t.like(first, { op: 'task.place', v: '1.0', leaf: 'slurm', step: '0', owner: process.getuid!(), jobDevices: { gres: [] } });
    t.regex(first.job, /^\d+$/);
    t.true(first.jobLimits.memory > 0, 'the job memory from S_JOB_ALLOC_MEM, in bytes');
    t.regex(first.jobLimits.cpus, /^\d+(-\d+)?(,\d+(-\d+)?)*$/);
  } finally {
    node().cluster.setPluginArgs(baseArgs);
    await server.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

slurmTest('failure=open: with cgstepd stopped the task runs, unconfined, and the message says so', async (t) => {
  node().cluster.setPluginArgs([...baseArgs, 'failure=open']);
  await node().stopAgent();
  try {
    const r = await srunMarked();
    t.is(r.code, 0, r.stderr);
    t.true(r.ran);
    t.false(cgroupLines(r.stdout)[0].startsWith(node().scopeRel), 'not in the scope');
    t.regex(r.stderr, /cgstep: placing the task for job \d+ step 0 failed \(cgstepd at .*: cannot connect: .*\); failure=open: continuing without cgroup confinement/);
  } finally {
    node().cluster.setPluginArgs(baseArgs);
    await node().startAgent();
  }
  const r = await srunMarked();
  t.is(r.code, 0, r.stderr);
  t.regex(cgroupLines(r.stdout)[0], /\/job_\d+\/step_0\/user\/task_0$/);
});

slurmTest('devices=yes (the default) and an agent that does not enforce device rules (ConstrainDevices=no): the task fails closed, naming why', async (t) => {
  const conf = path.join(node().cluster.dir, 'cgroup-nodevices.conf');
  fs.writeFileSync(conf, 'ConstrainDevices=no\n');
  node().cluster.setPluginArgs([]);
  await node().stopAgent();
  const lax = await startAgent({ root: node().root, socket: node().socket, args: [...node().agentArgs, '--config', conf] });
  try {
    const r = await srunMarked(['--gres=gpu:1']);
    t.not(r.code, 0);
    t.false(r.ran);
    t.regex(r.stderr, /cgstep: confining the step's devices for job \d+ step 0 failed \(cgstepd at .*: device rules are not enforced.*; devices=try in plugstack.conf runs tasks without device confinement\); tasks killed before exec \(failure=closed\)/);
    node().cluster.setPluginArgs(['devices=try']);
    const ok = await srunMarked(['--gres=gpu:1']);
    t.is(ok.code, 0, ok.stderr);
    t.true(ok.ran);
  } finally {
    node().cluster.setPluginArgs(baseArgs);
    await lax.stop();
    await node().startAgent();
  }
  await until(() => jobDirs().length === 0, 15_000, () => `no job dirs (${jobDirs().join(' ')})`);
});

slurmTest('listed as optional in plugstack.conf, the plugin still fails the task closed (Slurm would ignore its -1)', async (t) => {
  await node().stopAgent();
  try {
    fs.writeFileSync(node().cluster.plugstack, `optional ${node().cluster.plugin} socket=${node().socket} ${baseArgs.join(' ')}\n`);
    const r = await srunMarked();
    t.not(r.code, 0);
    t.false(r.ran, 'the command never ran');
    t.regex(r.stderr, /cgstep: placing the task for job \d+ step 0 failed .*task not started \(failure=closed\)/);
  } finally {
    node().cluster.setPluginArgs(baseArgs);
    await node().startAgent();
  }
});

slurmTest("an agent that refuses to place a step's tasks: slurmstepd kills them before exec (Slurm lets no task exec before every task_post_fork ran), the job stderr says why", async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-taskrefuser-'));
  const sock = path.join(dir, 'agent.sock');
  const server = await lineServer(sock, (line, s) => {
    const req = JSON.parse(line);
    const refuse = req.op === 'task.place' && req.tasks !== undefined;
    s.write(JSON.stringify(refuse ? { id: req.id, ok: false, error: { code: 'EBUSY', message: 'not now' } } : { id: req.id, ok: true, result: {} }) + '\n');
  });
  node().cluster.setPluginArgs([...baseArgs, `socket=${sock}`]);
  try {
    const r = await srunMarked(['-n2']);
    t.not(r.code, 0);
    t.false(r.ran, 'the command never ran');
    t.regex(r.stderr, /cgstep: placing task 0 \(pid \d+\) for job \d+ step 0 failed \(cgstepd at .*agent\.sock: EBUSY: not now\); task killed before exec \(failure=closed\)/);
    t.regex(r.stderr, /cgstep: placing task 1 \(pid \d+\) for job \d+ step 0 failed \(cgstepd at .*agent\.sock: EBUSY: not now\); task killed before exec \(failure=closed\)/);
  } finally {
    node().cluster.setPluginArgs(baseArgs);
    await server.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
