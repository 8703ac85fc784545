/**
 * A read-only peer that asks for `list` on four connections and never reads
 * the replies held all four of the slots that non-admin list/stats share,
 * for as long as it kept the connections open (a request still running is
 * never idle): every other user's list and stats then waited for ever. A
 * non-admin reply that stalls is now dropped after min(idle timeout, 10 s).
 * Real uids via setpriv.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { makeTestRoot, removeTestRoot } from '../helpers/cgroup.js';
import { killPid, startAgent, type RunningAgent } from '../helpers/agent.js';
import { addGroup, addUser, asUser, removeGroup, removeUser, type TestUser } from '../helpers/users.js';
import { makeSteps, sampleRootStatus } from './helpers.js';

const STEPS = 12000; // a list reply of more than a MiB: more than the socket and the agent buffer
const ctx: { root: string; dir: string; agent: RunningAgent; reader: TestUser; group: { name: string; gid: number } } = {} as any;

test.before(async () => {
  ctx.root = makeTestRoot('stall');
  ctx.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-stall-'));
  fs.chmodSync(ctx.dir, 0o755);
  ctx.group = addGroup('cgs_atk');
  ctx.reader = addUser('cgs_atk');
  ctx.agent = await startAgent({
    root: ctx.root,
    socket: path.join(ctx.dir, 's.sock'),
    args: ['--ignore-systemd', '--log-level', 'warn', '--read-only-gid', String(ctx.group.gid), '--idle-timeout', '2000'],
  });
  await makeSteps(ctx.agent.socket, STEPS);
});
test.after.always(async () => {
  await ctx.agent?.stop();
  fs.rmSync(ctx.dir, { recursive: true, force: true });
  await removeTestRoot(ctx.root);
  removeUser(ctx.reader);
  removeGroup(ctx.group);
});

const STALL = `
import socket, sys, time
ss = []
for i in range(4):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(sys.argv[1])
    s.sendall(b'{"id":1,"op":"list"}\\n')
    ss.append(s)
print('stalling', flush=True)
time.sleep(60)
`;
const PROBE = `
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.settimeout(12)
s.sendall(b'{"id":2,"op":"stats","job":100000}\\n')
try:
    d = s.recv(64)
    print('answered', d[:40])
except OSError as e:
    print('not answered', e)
`;

test("four list replies a reader never reads do not keep other users' stats waiting", async (t) => {
  const [cmd, ...args] = asUser(ctx.reader, [ctx.group.gid]);
  const staller = spawn(cmd, [...args, '/usr/bin/python3', '-c', STALL, ctx.agent.socket], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => killPid(staller.pid));
  await new Promise<void>((resolve) => staller.stdout!.on('data', (d) => String(d).includes('stalling') && resolve()));
  const sampler = sampleRootStatus(ctx.agent.socket, { intervalMs: 100 });
  await new Promise((r) => setTimeout(r, 1000)); // the four lists are running and stuck
  const probe = spawn(cmd, [...args, '/usr/bin/python3', '-c', PROBE, ctx.agent.socket], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  probe.stdout!.on('data', (d) => (out += d));
  await new Promise((r) => probe.once('exit', r));
  const { worstMs, failures } = await sampler.stop();
  t.log(`probe: ${out.trim()}; root's worst status ${worstMs} ms`);
  t.regex(out, /answered b'\{"id":2,"ok":true/, 'the other stats request was answered');
  t.is(ctx.agent.proc.exitCode, null);
  t.deepEqual(failures, []);
  t.true(worstMs < 500, `root's status took ${worstMs} ms`);
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  t.is((await c.request('status', {})).steps, STEPS, 'nothing was created or removed');
});
