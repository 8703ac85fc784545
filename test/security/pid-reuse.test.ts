/**
 * What a move is checked with, so that a pid reaped and taken by a new
 * process between the check and the cgroup.procs write is noticed: the
 * process's open /proc/PID directory holds its pid while the process is
 * alive or a zombie (no new process can have the number), and lets go once it
 * is reaped. The gate checks running() just before the write and holdsPid()
 * just after it. Real processes: a zombie is made by a parent that never
 * reaps (a shell that execs into sleep).
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import { ProcessRef } from '../../src/proc/index.js';
import { killPid, waitFor } from '../helpers/agent.js';

const state = (pid: number) => /^State:\s+(\S)/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];

test('a /proc/PID reference holds the pid through the zombie state and lets go once the process is reaped', async (t) => {
  // sh starts the child, prints its pid, then becomes a sleep that never reaps it.
  const parent = spawn('sh', ['-c', 'sleep 600 & echo $!; exec sleep 601'], { stdio: ['ignore', 'pipe', 'ignore'] });
  t.teardown(() => killPid(parent.pid));
  const child = await new Promise<number>((r) => parent.stdout!.once('data', (d) => r(Number(String(d).trim()))));
  t.teardown(() => killPid(child));
  const ref = ProcessRef.open(child);
  t.teardown(() => ref.close());
  t.true(ref.running());
  t.true(ref.holdsPid());

  process.kill(child, 'SIGKILL');
  await waitFor(() => state(child) === 'Z', 5000, 'the child to be a zombie');
  t.false(ref.running(), 'exited: a move now is refused');
  t.true(ref.holdsPid(), 'not reaped: the pid cannot name another process yet');

  process.kill(parent.pid!, 'SIGKILL'); // the zombie goes to init, which reaps it
  await waitFor(() => !fs.existsSync(`/proc/${child}`), 5000, 'the zombie to be reaped');
  t.false(ref.holdsPid(), 'reaped: a write by that number could have reached a new process');
});
