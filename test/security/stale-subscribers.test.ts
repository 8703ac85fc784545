/**
 * An `events` subscriber whose peer closes (the client exits, `cgstep events`
 * interrupted) must not keep its connection slot: idle subscribers are never
 * timed out, and a node with no events for the uid would never write to it
 * (the write that fails is what used to end it). A half-closed subscriber
 * (`echo '{"op":"events"}' | socat - UNIX-CONNECT:...`) still gets its events,
 * and is released once it closes too. Real uids.
 */
import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import { asUser, withTwoUsers } from '../helpers/users.js';
import { spawnSleeper, waitFor } from '../helpers/agent.js';

const ctx = withTwoUsers(test, 'stalesub');

// N times: connect, subscribe, read the reply, close (as an interrupted `cgstep events` does).
const SUBSCRIBE_AND_LEAVE = `
import socket, sys
for i in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[1])
    s.sendall(b'{"v":"1.0","id":1,"op":"events"}\\n')
    got = b''
    while not got.endswith(b'\\n'):
        got += s.recv(4096)
    assert b'"subscribed":true' in got, got
    s.close()
print('done', flush=True)
`;

// Subscribe, half-close, read one event after the go-ahead on stdin, then close.
const HALF_CLOSED = `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(b'{"v":"1.0","id":1,"op":"events"}\\n')
s.shutdown(socket.SHUT_WR)
got = b''
while got.count(b'\\n') < 2:
    b = s.recv(4096)
    if not b: break
    got += b
print(got.decode(), flush=True)
`;

function runAs(u: { uid: number; gid: number }, script: string, args: string[], timeout = 30000) {
  const [cmd, ...rest] = asUser(u, []);
  return spawnSync(cmd, [...rest, '/usr/bin/python3', '-c', script, ...args], { encoding: 'utf8', timeout });
}

test.serial("a user's subscribers that closed give their slots back: 40 in a row leave it able to connect", async (t) => {
  const r = runAs(ctx.alice, SUBSCRIBE_AND_LEAVE, [ctx.agent.socket, '40']);
  t.is(r.status, 0, r.stderr);
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  await waitFor(async () => (await c.request('status', {})).connections === 1, 5000, "the closed subscribers' connections to go");
  const again = runAs(ctx.alice, SUBSCRIBE_AND_LEAVE, [ctx.agent.socket, '1']);
  t.is(again.status, 0, again.stderr);
});

test.serial("root's subscribers that closed give their slots back", async (t) => {
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  const r = spawnSync('/usr/bin/python3', ['-c', SUBSCRIBE_AND_LEAVE, ctx.agent.socket + '.admin', '20'], { encoding: 'utf8', timeout: 30000 });
  t.is(r.status, 0, r.stderr);
  await waitFor(async () => (await c.request('status', {})).connections === 1, 5000, "root's closed subscribers' connections to go");
  t.pass();
});

test.serial('a half-closed subscriber still gets its events', async (t) => {
  const [cmd, ...rest] = asUser(ctx.alice, []);
  const sub = spawn(cmd, [...rest, '/usr/bin/python3', '-c', HALF_CLOSED, ctx.agent.socket], { stdio: ['ignore', 'pipe', 'inherit'] });
  ctx.pids.push(sub.pid!);
  let out = '';
  sub.stdout.on('data', (d) => (out += d));
  const exited = new Promise((r) => sub.once('exit', r));
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  const before = (await c.request('status', {})).connections;
  await waitFor(async () => (await c.request('status', {})).connections === before + 1, 5000, 'the half-closed subscriber to connect');
  // Give it a job of alice's that empties: its events reach the half-closed subscriber.
  const p = spawnSleeper();
  ctx.pids.push(p.pid!);
  await c.request('task.place', { job: 7100, step: 0, pid: p.pid!, task: 0, owner: ctx.alice.uid });
  p.kill('SIGKILL');
  await exited;
  t.regex(out, /"event":"task.empty","job":"7100"/);
  await waitFor(async () => (await c.request('status', {})).connections === before, 5000, "the half-closed subscriber's connection to go once it closed");
  await c.request('destroy', { job: 7100 });
});
