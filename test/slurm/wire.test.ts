/**
 * What the cgstep SPANK plugin says on the wire, with a real Slurm: a
 * recording agent (a Unix socket that checks every line against the project's
 * own request schema, src/rpc/protocol.ts, and answers ok) stands in for
 * cgstepd, so the requests themselves can be asserted: ids, the owner, limits
 * from Slurm's allocation, the job's and the step's GPUs from the variable
 * slurmstepd sets from the credential (and not from a user's environment),
 * no request from slurmd's prolog (the plugin has none), the step daemon and
 * each task by pid over one connection per step, destroy at the step's end.
 */
import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { requestSchema } from '../../src/rpc/protocol.js';
import { startSlurm, type SlurmCluster } from '../harness/slurm.js';
import { lineServer, slurmGate, until, type LineServer } from './helpers.js';

const { ok: slurmOk, test: slurmTest } = slurmGate(import.meta.url);

interface Seen {
  req: any;
  /** The connection it came on (numbered in order of first request). */
  conn: number;
}

let cluster: SlurmCluster;
let server: LineServer;
let dir: string;
const seen: Seen[] = [];
const problems: string[] = [];
const conns = new Map<import('node:net').Socket, number>();

test.before(async () => {
  if (!slurmOk) return;
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-recorder-'));
  const sock = path.join(dir, 'recorder.sock');
  server = await lineServer(sock, (line, s) => {
    let req: any;
    try {
      req = JSON.parse(line);
    } catch {
      problems.push(`not JSON: ${line}`);
      s.destroy();
      return;
    }
    const parsed = requestSchema.safeParse(req);
    if (!parsed.success) problems.push(`schema: ${line}: ${parsed.error.message}`);
    if (!conns.has(s)) conns.set(s, conns.size);
    seen.push({ req, conn: conns.get(s)! });
    s.write(JSON.stringify({ id: req.id, ok: true, result: { job: req.job, note: { nested: ['x', { y: 1.5e3 }] } } }) + '\n');
  });
  cluster = await startSlurm({ name: 'wire', socket: sock });
});

test.after.always(async () => {
  await cluster?.stop();
  await server?.close();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

test.beforeEach(() => {
  seen.length = 0;
});

function forJob(job: string) {
  return seen.map((s) => s.req).filter((r) => r.job === job);
}

async function settled(job: string, step: string) {
  await until(() => forJob(job).some((r) => r.op === 'destroy' && r.step === step), 15_000, `destroy of ${job}.${step}`);
}

/** The job epilog's destroy of the whole job (after its last step). */
async function epilogDone(job: string) {
  await until(() => forJob(job).some((r) => r.op === 'destroy' && r.step === undefined), 15_000, `the epilog's destroy of job ${job}`);
}

slurmTest('srun -n2 --mem=300 --gres=gpu:2: no prolog request; the step daemon makes the job (owner, limits, GPUs) and the step in one request, the tasks of the node by pid in one more on the same connection, destroy', async (t) => {
  const r = await cluster.srun(['-n2', '--mem=300', '--gres=gpu:2', 'sh', '-c', 'echo "$SLURM_JOB_ID $SLURM_PROCID $$ $PPID $CUDA_VISIBLE_DEVICES"']);
  t.is(r.code, 0, r.stderr);
  const tasks = r.stdout.trim().split('\n').map((l) => l.split(' '));
  const job = tasks[0][0];
  await settled(job, '0');
  t.deepEqual(problems, []);
  const reqs = forJob(job);
  for (const q of reqs) t.is(q.v, '1.0');
  for (const q of reqs.filter((x) => x.op !== 'destroy')) t.is(q.owner, process.getuid!(), "every request names the job's uid");
  const visible = tasks[0][4].split(',');
  t.is(visible.length, 2);
  const gres = visible.map((i) => `gpu:${i}`);
  t.deepEqual(reqs.filter((q) => q.op === 'job.create'), [], 'no prolog: slurmd execs no slurmstepd for the job');
  // The step daemon, in one request: the job with its limits and GPUs, the step with its own, and itself in slurm/.
  const places = reqs.filter((q) => q.op === 'task.place');
  const stepd = places.filter((q) => q.leaf === 'slurm');
  t.is(stepd.length, 1, 'the step made once, by placing its step daemon');
  t.is(reqs[0], stepd[0], 'it comes first');
  t.deepEqual(stepd[0].jobDevices, { gres }, "the job's GPUs: Slurm's SLURM_STEP_GPUS, from the credential");
  t.is(stepd[0].jobLimits.memory, 300 * 1024 * 1024, 'S_JOB_ALLOC_MEM (MB) in bytes');
  t.regex(stepd[0].jobLimits.cpus, /^\d+(-\d+)?(,\d+(-\d+)?)*$/);
  t.is(stepd[0].pid, Number(tasks[0][3]), "the step daemon is the tasks' parent");
  t.is(stepd[0].stepLimits.memory, 300 * 1024 * 1024, 'S_STEP_ALLOC_MEM (MB) in bytes');
  t.deepEqual(stepd[0].stepDevices, { gres });
  const batch = places.filter((q) => q.tasks);
  t.is(batch.length, 1, "the node's tasks placed in one request");
  t.deepEqual(Object.keys(batch[0]).sort(), ['id', 'job', 'op', 'owner', 'step', 'tasks', 'v'], 'the tasks only attach');
  const byTask = new Map((batch[0].tasks as { task: number; pid: number }[]).map((x) => [x.task, x.pid]));
  for (const [, procid, pid] of tasks) t.is(byTask.get(Number(procid)), Number(pid), `task ${procid} placed by its own pid`);
  t.is(byTask.size, tasks.length);
  const stepConn = seen.filter((x) => x.req.job === job && (x.req.op === 'task.place' || (x.req.op === 'destroy' && x.req.step === '0')));
  t.is(new Set(stepConn.map((x) => x.conn)).size, 1, "the step's requests on one kept connection");
  await epilogDone(job);
  const all = forJob(job);
  const d = all.filter((q) => q.op === 'destroy');
  t.is(d.length, 2);
  t.like(d[0], { step: '0', force: true, reapJob: true });
  t.like(d[1], { force: true });
  t.is(d[1].step, undefined, "the job epilog's destroy of the job");
  t.deepEqual(all.slice(-2), d, 'the destroys come last');
});

slurmTest('no --gres: an empty gres list (deny every gres device), even when the user exports CUDA_VISIBLE_DEVICES and SLURM_STEP_GPUS', async (t) => {
  const r = await cluster.srun(['-n1', '--export=ALL,CUDA_VISIBLE_DEVICES=0,1,2,3,SLURM_STEP_GPUS=0,1,2,3', 'sh', '-c', 'echo $SLURM_JOB_ID; echo "[$CUDA_VISIBLE_DEVICES]"']);
  t.is(r.code, 0, r.stderr);
  const [job, visible] = r.stdout.trim().split('\n');
  t.is(visible, '[]', 'Slurm itself drops them for a step without GPUs');
  await settled(job, '0');
  t.like(forJob(job).find((q) => q.op === 'task.place'), { jobDevices: { gres: [] }, stepDevices: { gres: [] } }, 'no GPU for the job nor the step');
  t.deepEqual(problems, []);
});

slurmTest('sbatch --gres=gpu:1: step "batch" with the job GPU, an srun inside is step "0" with its own; both destroyed, the batch step last', async (t) => {
  const b = await cluster.sbatch('#!/bin/sh\necho "$CUDA_VISIBLE_DEVICES"\nsrun -n1 --gres=gpu:1 sh -c \'echo "$CUDA_VISIBLE_DEVICES"\'\n', ['--gres=gpu:1']);
  await cluster.waitJobDone(b.job);
  const job = String(b.job);
  await settled(job, 'batch');
  const out = fs.readFileSync(b.out, 'utf8').trim().split('\n');
  t.is(out.length, 2, fs.readFileSync(b.err, 'utf8'));
  const steps = forJob(job).filter((q) => q.op === 'task.place' && q.leaf === 'slurm');
  t.deepEqual(steps.map((q) => q.step), ['batch', '0']);
  t.is(forJob(job)[0], steps[0], 'the batch step daemon comes first');
  t.deepEqual(steps[0].jobDevices, { gres: [`gpu:${out[0]}`] }, "the job's GPU: SLURM_JOB_GPUS in the batch step");
  t.deepEqual(steps[0].stepDevices, { gres: [`gpu:${out[0]}`] });
  t.deepEqual(steps[1].stepDevices, { gres: [`gpu:${out[1]}`] });
  await epilogDone(job);
  t.deepEqual(forJob(job).filter((q) => q.op === 'destroy').map((q) => q.step), ['0', 'batch', undefined]);
  t.deepEqual(problems, []);
});

slurmTest('devices=no sends no device request; bad plugstack.conf options fail the step with a message', async (t) => {
  const sock = server.sock;
  cluster.setPluginArgs(['devices=no']);
  try {
    const r = await cluster.srun(['-n1', '--gres=gpu:1', 'sh', '-c', 'echo $SLURM_JOB_ID']);
    t.is(r.code, 0, r.stderr);
    const job = r.stdout.trim();
    await settled(job, '0');
    t.like(forJob(job).find((q) => q.op === 'task.place'), { stepDevices: undefined, jobDevices: undefined });

    cluster.setPluginArgs(['failure=maybe']);
    const bad = await cluster.srun(['-n1', 'true']);
    t.not(bad.code, 0);
    t.regex(bad.stderr, /cgstep: unknown plugstack.conf option "failure=maybe"/);
    cluster.setPluginArgs(['socket=relative.sock']);
    const bad2 = await cluster.srun(['-n1', 'true']);
    t.not(bad2.code, 0);
    t.regex(bad2.stderr, /cgstep: socket= needs an absolute path/);
  } finally {
    cluster.setPluginArgs([]);
  }
  t.truthy(sock);
  t.deepEqual(problems, []);
});

slurmTest('in a job with two GPUs: an srun without --gres gets both (as Slurm allocates), srun --gres=none gets none', async (t) => {
  const b = await cluster.sbatch(
    '#!/bin/sh\nsrun -n1 sh -c \'echo "[$CUDA_VISIBLE_DEVICES]"\'\nsrun -n1 --gres=none sh -c \'echo "[$CUDA_VISIBLE_DEVICES]"\'\n',
    ['--gres=gpu:2'],
  );
  await cluster.waitJobDone(b.job);
  const job = String(b.job);
  await epilogDone(job);
  const out = fs.readFileSync(b.out, 'utf8').trim().split('\n');
  const both = out[0].slice(1, -1).split(',');
  t.is(both.length, 2, fs.readFileSync(b.err, 'utf8'));
  t.is(out[1], '[]');
  const steps = Object.fromEntries(forJob(job).filter((q) => q.op === 'task.place' && q.leaf === 'slurm').map((q) => [q.step, q.stepDevices.gres]));
  t.deepEqual(steps, { batch: both.map((i) => `gpu:${i}`), '0': both.map((i) => `gpu:${i}`), '1': [] });
  t.deepEqual(problems, []);
});
