/**
 * Lifecycle as an admin sees it: SIGTERM stops an idle agent promptly with a
 * final "stopped" log line; `cgstep events` says why it ended and fails when
 * the agent goes away; one job's events come task -> step -> job.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { makeTestRoot, removeTestRoot } from '../helpers/cgroup.js';
import { CGSTEP, startAgent, waitFor } from '../helpers/agent.js';

test('SIGTERM: an idle agent stops with a final "stopped" line (exit 0); events says the agent went away and exits 1', async (t) => {
  const root = makeTestRoot('stop');
  t.teardown(() => removeTestRoot(root));
  const a = await startAgent({ root, args: ['--ignore-systemd'] });
  t.teardown(() => a.stop());
  const ev = spawn(process.execPath, [CGSTEP, '--socket', a.socket, 'events'], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => ev.kill('SIGKILL'));
  let err = '';
  ev.stderr!.on('data', (d) => (err += d));
  const evExit = new Promise<number | null>((r) => ev.once('exit', (c) => r(c)));
  // The events client's own connection (by its pid: readiness checks connect too).
  await waitFor(() => a.logLines().some((l) => l.msg === 'connection accepted' && l.peerPid === ev.pid), 60000, 'the events client to connect');
  const t0 = performance.now();
  const code = await a.stop('SIGTERM');
  t.log(`SIGTERM to exit: ${Math.round(performance.now() - t0)} ms (the agent's own stopMs: ${a.logLines().find((l) => l.msg?.startsWith('stopped'))?.stopMs} ms)`);
  t.is(code, 0);
  const last = a.logLines().pop();
  t.regex(last.msg, /^stopped; steps keep running/);
  t.is(last.signal, 'SIGTERM');
  t.is(typeof last.stopMs, 'number');
  t.is(await evExit, 1);
  t.regex(err, /^cgstep: EIO: cgstepd closed the event stream \(the agent stopped or restarted\)/);
});

test('events: one job always task -> step -> job (on exit, and on destroy --force)', async (t) => {
  const root = makeTestRoot('order');
  t.teardown(() => removeTestRoot(root));
  const a = await startAgent({ root, args: ['--ignore-systemd'] });
  t.teardown(() => a.stop());
  const c = await a.client();
  t.teardown(() => c.close());
  const seen: string[] = [];
  await c.events((e) => seen.push(`${e.event} ${e.job}`));
  for (const job of ['61', '62', '63']) {
    t.is(a.cli(['job', 'create', job]).code, 0);
    // A task that ends by itself: the kernel empties task, step and job at once.
    t.is(a.cli(['run', job, '0', '--task', '0', '--', 'true']).code, 0);
  }
  await waitFor(() => seen.filter((s) => s.startsWith('job.empty')).length >= 3, 20000, 'three job.empty events');
  const sleeper = spawn('sleep', ['600'], { stdio: 'ignore' });
  t.teardown(() => sleeper.kill('SIGKILL'));
  t.is(a.cli(['step', 'create', '64', '0']).code, 0);
  t.is(a.cli(['attach', '64', '0', String(sleeper.pid), '--task', '2']).code, 0);
  t.is(a.cli(['destroy', '64', '--force']).code, 0);
  await waitFor(() => seen.includes('job.empty 64'), 20000, 'job.empty 64');
  for (const job of ['61', '62', '63', '64']) {
    const mine = seen.filter((s) => s.endsWith(` ${job}`));
    t.deepEqual(mine, ['task.empty', 'step.empty', 'job.empty'].map((e) => `${e} ${job}`), `job ${job}: ${seen.join(', ')}`);
  }
});
