/**
 * Crash safety under churn: 16 clients create a step, put a live process in
 * task 0, and destroy it, in a loop, retrying any request that failed because
 * the agent died (every op is idempotent). Meanwhile the agent is SIGKILLed at
 * random moments, at least 20 times, and restarted. Afterwards the tree must
 * hold exactly the steps the clients were last told exist, with their process
 * in the right leaf, and nothing else.
 * CGSTEP_CHURN_SECONDS sets the length (default 40; `npm run soak` uses 600).
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { makeTestRoot, removeTestRoot } from '../helpers/cgroup.js';
import { killPid, sleep, startAgent, tmpSocket, type RunningAgent } from '../helpers/agent.js';
import { CgstepClient } from '../../src/rpc/client.js';

const SECONDS = Number(process.env.CGSTEP_CHURN_SECONDS ?? 40);
const CLIENTS = 16;
const MIN_KILLS = 20;

test('16 clients, the agent SIGKILLed 20+ times: no acknowledged step lost, nothing left over', async (t) => {
  t.timeout((SECONDS + 90) * 1000);
  const root = makeTestRoot('churn');
  const socket = tmpSocket('churn');
  const args = ['--ignore-systemd', '--log-level', 'warn', '--node-name', 'churn'];
  let agent: RunningAgent = await startAgent({ root, socket, args });
  const pids = new Set<number>();
  t.teardown(async () => {
    await agent.stop('SIGKILL');
    for (const p of pids) killPid(p);
    fs.rmSync(path.dirname(socket), { recursive: true, force: true });
    await removeTestRoot(root);
  });
  const scope = path.join(root, 'system.slice', 'churn_slurmstepd.scope');

  /** What each client was last told: job -> live pid, or absent once destroyed. */
  const live = new Map<string, number>();
  let retries = 0;
  let cycles = 0;
  let kills = 0;
  let stop = false;

  async function call(op: string, args: any): Promise<any> {
    for (let delay = 5; ; delay = Math.min(delay * 2, 200)) {
      let c: CgstepClient | null = null;
      try {
        c = await CgstepClient.connect(socket, { timeoutMs: 5000 });
        return await c.request(op as any, args, { timeoutMs: 15000 });
      } catch (err) {
        const code = (err as any).code;
        if (!['EIO', 'ETIMEDOUT', 'EBUSY'].includes(code) && !/connect/.test((err as Error).message)) throw err;
        retries++;
        await sleep(delay);
      } finally {
        c?.close();
      }
    }
  }

  async function client(n: number) {
    for (let i = 0; !stop; i++) {
      const job = String(1000 + n * 10000 + i);
      await call('step.create', { job, step: 0 });
      const p = spawn('sleep', ['300'], { stdio: 'ignore' });
      pids.add(p.pid!);
      await call('attach', { job, step: 0, pid: p.pid!, task: 0 });
      live.set(job, p.pid!);
      if (i % 3 === 2) continue; // leave every third step alive
      await call('destroy', { job, force: true });
      live.delete(job);
      pids.delete(p.pid!);
      cycles++;
    }
  }

  async function killer() {
    const end = Date.now() + SECONDS * 1000;
    while (Date.now() < end || kills < MIN_KILLS) {
      await sleep(200 + Math.random() * (SECONDS * 1000) / (MIN_KILLS * 1.5));
      await agent.stop('SIGKILL');
      kills++;
      agent = await startAgent({ root, socket, args });
    }
    stop = true;
  }

  await Promise.all([killer(), ...Array.from({ length: CLIENTS }, (_, n) => client(n))]);

  // The tree holds exactly the live steps, each with its process in task_0.
  const jobsOnDisk = fs.readdirSync(scope).filter((n) => n.startsWith('job_')).map((n) => n.slice(4)).sort();
  t.deepEqual(jobsOnDisk, [...live.keys()].sort(), 'jobs on disk = jobs acknowledged alive');
  for (const [job, pid] of live) {
    const procs = fs.readFileSync(path.join(scope, `job_${job}`, 'step_0', 'user', 'task_0', 'cgroup.procs'), 'utf8');
    t.true(procs.split('\n').includes(String(pid)), `job ${job}: pid ${pid} in task_0`);
  }
  const status = JSON.parse(agent.cli(['--json', 'status']).stdout);
  t.is(status.jobs, live.size);
  // Device control is its own backend; everything else must be healthy.
  t.deepEqual(status.degraded.filter((d: string) => !/device control unavailable/.test(d)), []);
  t.is(status.orphans.populated.length, 0);
  t.true(kills >= MIN_KILLS);
  t.log(`churn: ${SECONDS}s, ${kills} SIGKILLs survived, ${cycles} create/attach/destroy cycles, ${live.size} steps alive at the end, ${retries} retried requests, 0 lost`);
});
