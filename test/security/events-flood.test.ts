/**
 * An `events` subscriber that never reads: every event is a small write that
 * waits in the agent's memory, several times its size. A non-admin subscriber
 * is dropped once 256 KiB of events wait for it (it was 8 MiB, and 30 such
 * connections of one uid took the agent from 245 to 895 MB). Real uids.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSleeper } from '../helpers/agent.js';
import { asUser, withTwoUsers } from '../helpers/users.js';

const ctx = withTwoUsers(test, 'evflood');

// Subscribe, then never read (a small receive buffer, so the agent's side fills soon).
const SUBSCRIBER = `
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.connect(sys.argv[1])
s.sendall(b'{"v":"1.0","id":1,"op":"events"}\\n')
print('subscribed', flush=True)
time.sleep(600)
`;

test.serial("a user's events subscriber that never reads is dropped at 256 KiB of unread events; root goes on", async (t) => {
  const [cmd, ...args] = asUser(ctx.alice, []);
  const sub = spawn(cmd, [...args, '/usr/bin/python3', '-c', SUBSCRIBER, ctx.agent.socket], { stdio: ['ignore', 'pipe', 'inherit'] });
  ctx.pids.push(sub.pid!);
  await new Promise((r) => sub.stdout.once('data', r));
  const p = spawnSleeper();
  ctx.pids.push(p.pid!);
  const park = path.join(ctx.root, 'park');
  fs.mkdirSync(park);
  const gone = new Promise((r) => p.once('exit', r));
  t.teardown(async () => {
    p.kill('SIGKILL');
    await gone;
    fs.rmdirSync(park);
  });
  fs.writeFileSync(path.join(park, 'cgroup.procs'), String(p.pid));
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  t.is((await c.request('status', {})).connections, 2, "root's and alice's subscriber");
  // Alice's jobs, made and emptied by root: six events each (populated, then empty, for job, step and task).
  let cycles = 0;
  let open = 2;
  for (; cycles < 4000 && open > 1; cycles++) {
    await c.request('task.place', { job: 7000 + cycles, step: 0, pid: p.pid!, task: 0, owner: ctx.alice.uid });
    fs.writeFileSync(path.join(park, 'cgroup.procs'), String(p.pid));
    await c.request('destroy', { job: 7000 + cycles });
    if (cycles % 50 === 49) open = (await c.request('status', {})).connections;
  }
  t.log(`subscriber dropped after ${cycles} cycles`);
  t.is(open, 1, `the subscriber was still connected after ${cycles} cycles`);
  // Well before 8 MiB: at most about 4 MiB of events (plus what the kernel buffers) were sent its way.
  t.true(cycles < 4000);
  t.is(ctx.agent.proc.exitCode, null);
});
