/**
 * A peer that resets its connection (SO_LINGER 0, closing with the agent's
 * reply unread, or closing mid-request) must never crash the agent, whatever
 * its role: refused, read-only or allowed. Real uids through setpriv.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { makeTestRoot, removeTestRoot } from '../helpers/cgroup.js';
import { startAgent, type RunningAgent } from '../helpers/agent.js';
import { addGroup, addUser, asUser, removeGroup, removeUser, type TestUser } from '../helpers/users.js';
import { makeSteps, sampleRootStatus } from './helpers.js';

const ctx: { root: string; dir: string; agent: RunningAgent; allowed: TestUser; reader: TestUser; stranger: TestUser; group: { name: string; gid: number } } = {} as any;

test.before(async () => {
  ctx.root = makeTestRoot('reset');
  ctx.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-reset-'));
  fs.chmodSync(ctx.dir, 0o755);
  ctx.group = addGroup('cgs_rpc');
  ctx.allowed = addUser('cgs_rpc');
  ctx.reader = addUser('cgs_rpc');
  ctx.stranger = addUser('cgs_rpc');
  ctx.agent = await startAgent({
    root: ctx.root,
    socket: path.join(ctx.dir, 's.sock'),
    args: ['--ignore-systemd', '--log-level', 'warn', '--allow-uid', String(ctx.allowed.uid), '--read-only-gid', String(ctx.group.gid)],
  });
  // Some steps, so that list replies are big enough to be cut off by the reset.
  await makeSteps(ctx.agent.socket, 200);
});
test.after.always(async () => {
  await ctx.agent?.stop();
  fs.rmSync(ctx.dir, { recursive: true, force: true });
  await removeTestRoot(ctx.root);
  for (const u of [ctx.allowed, ctx.reader, ctx.stranger]) removeUser(u);
  removeGroup(ctx.group);
});

// Connect, send a request, then reset: straight away, after one byte of the
// reply, or half-way through a request line. /usr/bin/python3 because Node
// cannot set SO_LINGER on a Unix socket.
const RESETTER = `
import socket, struct, sys
path, n = sys.argv[1], int(sys.argv[2])
reqs = [b'{"id":1,"op":"list"}\\n', b'{"id":2,"op":"status"}\\n', b'{"id":3,"op":"sta']
for i in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
    s.settimeout(5)
    try:
        s.connect(path)
        s.sendall(reqs[i % 3])
        if i % 2 and i % 3 != 2:
            s.recv(1)
    except OSError:
        pass
    s.close()
print('done', n)
`;

function resetAs(u: TestUser, groups: number[], n: number): Promise<string> {
  const [cmd, ...args] = asUser(u, groups);
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, [...args, '/usr/bin/python3', '-c', RESETTER, ctx.agent.socket, String(n)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (out += d));
    p.once('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`resetter exited ${code}: ${out}`))));
  });
}

test('resets from a refused, a read-only and an allowed uid leave the agent up and root answered', async (t) => {
  const sampler = sampleRootStatus(ctx.agent.socket);
  const outs = await Promise.all([resetAs(ctx.stranger, [], 150), resetAs(ctx.reader, [ctx.group.gid], 150), resetAs(ctx.allowed, [], 150)]);
  const { worstMs, samples, failures } = await sampler.stop();
  for (const o of outs) t.regex(o, /done 150/);
  t.is(ctx.agent.proc.exitCode, null, `the agent exited:\n${ctx.agent.log().slice(-2000)}`);
  t.deepEqual(failures, []);
  t.true(samples > 0);
  t.log(`root's worst status: ${worstMs} ms over ${samples} samples`);
  t.true(worstMs < 500, `root's status took ${worstMs} ms during the resets`);
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  const st = await c.request('status', {});
  t.is(st.steps, 200, 'nothing was created or removed');
  t.is(st.connections, 1, 'no reset connection is left counted');
});
