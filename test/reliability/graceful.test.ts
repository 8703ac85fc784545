/**
 * Graceful stop: SIGTERM and SIGINT stop accepting, let in-flight requests
 * finish, exit 0, and leave running steps alone; the next start adopts them.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { makeTestRoot, removeTestRoot } from '../helpers/cgroup.js';
import { killPid, spawnSleeper, startAgent, tmpSocket } from '../helpers/agent.js';

for (const sig of ['SIGTERM', 'SIGINT'] as const) {
  test(`${sig}: in-flight request answered, steps untouched, next start adopts them`, async (t) => {
    const root = makeTestRoot(`grace-${sig.toLowerCase()}`);
    const socket = tmpSocket('grace');
    const p = spawnSleeper();
    t.teardown(async () => {
      killPid(p.pid);
      fs.rmSync(path.dirname(socket), { recursive: true, force: true });
      await removeTestRoot(root);
    });
    const a = await startAgent({ root, socket, args: ['--ignore-systemd'] });
    a.keepSocketDir = true;
    const c = await a.client();
    await c.request('step.create', { job: 3, step: 0 });
    await c.request('attach', { job: 3, step: 0, pid: p.pid!, task: 0 });
    // A request in flight when the signal lands: freezing waits on the kernel.
    const inflight = c.request('freeze', { job: 3, step: 0 });
    const code = a.stop(sig);
    t.like(await inflight, { frozen: true });
    t.is(await code, 0);
    c.close();
    t.false(fs.existsSync(socket), 'socket removed on a graceful stop');
    t.is(p.exitCode, null);
    t.regex(fs.readFileSync(`/proc/${p.pid}/cgroup`, 'utf8'), /job_3\/step_0\/user\/task_0/);
    const b = await startAgent({ root, socket, args: ['--ignore-systemd'] });
    t.teardown(() => b.stop());
    const l = JSON.parse(b.cli(['--json', 'list']).stdout);
    t.deepEqual(l.jobs.map((j: any) => j.job), ['3']);
    t.is(b.cli(['thaw', '3', '0']).code, 0);
  });
}
