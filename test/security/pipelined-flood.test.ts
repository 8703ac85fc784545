/**
 * A read-only or allowed peer that pipelines 64 KiB writes of tiny lines
 * (junk, empty objects, hello) over several connections must not hold the
 * agent's event loop: each line is answered without I/O, and before, they ran
 * back to back (a 64 KiB read split at once into ~20,000 lines, each finished
 * line starting the next in the same turn, and lines of closed connections
 * still running), so root's status waited for seconds. Real uids via setpriv;
 * the attacker runs at nice 19, as a user slice would weigh it against the
 * agent.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { makeTestRoot, removeTestRoot } from '../helpers/cgroup.js';
import { startAgent, waitFor, type RunningAgent } from '../helpers/agent.js';
import { addGroup, addUser, asUser, removeGroup, removeUser, requestsAs, type TestUser } from '../helpers/users.js';
import { makeSteps, sampleRootStatus } from './helpers.js';

const ctx: { root: string; dir: string; agent: RunningAgent; allowed: TestUser; reader: TestUser; group: { name: string; gid: number } } = {} as any;

test.before(async () => {
  ctx.root = makeTestRoot('pipeline');
  ctx.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-pipeline-'));
  fs.chmodSync(ctx.dir, 0o755);
  ctx.group = addGroup('cgs_atk');
  ctx.allowed = addUser('cgs_atk');
  ctx.reader = addUser('cgs_atk');
  ctx.agent = await startAgent({
    root: ctx.root,
    socket: path.join(ctx.dir, 's.sock'),
    args: ['--ignore-systemd', '--log-level', 'warn', '--allow-uid', String(ctx.allowed.uid), '--read-only-gid', String(ctx.group.gid)],
  });
  await makeSteps(ctx.agent.socket, 50);
  // The first malformed request loads the schema library (once, about 0.2 s
  // of CPU): done here, so the flood measures what it can repeat.
  const c = await ctx.agent.client();
  await c.request('step.create', { job: 'x' } as never).catch(() => undefined);
  c.close();
});
test.after.always(async () => {
  await ctx.agent?.stop();
  fs.rmSync(ctx.dir, { recursive: true, force: true });
  await removeTestRoot(ctx.root);
  for (const u of [ctx.allowed, ctx.reader]) removeUser(u);
  removeGroup(ctx.group);
});

// Threads that each keep a connection full of one kind of line, reading what
// comes back without waiting for it, reconnecting when dropped; prints how
// many reply bytes it got. /usr/bin/python3: plain blocking sockets.
const FLOODER = `
import socket, sys, threading, time
path, kind, conns, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
rules = ','.join(['"c %d:* rwm"' % i for i in range(1, 91)] + ['"c *:%d rwm"' % i for i in range(1, 91)])
devices = ('{"id":1,"op":"step.create","job":300,"step":0,"devices":{"policy":"closed","deny":[%s]}}\\n' % rules).encode()
line = {'junk': b'x\\n', 'empty': b'{}\\n', 'hello': b'{"id":1,"op":"hello"}\\n', 'devices': devices}[kind]
chunk = line * (65536 // len(line))
end = time.time() + secs
got = [0]
def run():
    while time.time() < end:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(2)
            s.connect(path)
            while time.time() < end:
                s.sendall(chunk)
                s.setblocking(False)
                try:
                    while True:
                        d = s.recv(1 << 20)
                        if not d:
                            break
                        got[0] += len(d)
                except (BlockingIOError, OSError):
                    pass
                s.settimeout(2)
        except OSError:
            time.sleep(0.01)
        finally:
            s.close()
ts = [threading.Thread(target=run) for _ in range(conns)]
[t.start() for t in ts]
[t.join() for t in ts]
print('replies', got[0])
`;

function flood(u: TestUser, groups: number[], kind: string, conns: number, secs: number, nice = 19): Promise<number> {
  const [cmd, ...args] = asUser(u, groups);
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, [...args, 'nice', '-n', String(nice), '/usr/bin/python3', '-c', FLOODER, ctx.agent.socket, kind, String(conns), String(secs)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (out += d));
    p.once('exit', (code) => {
      const m = /replies (\d+)/.exec(out);
      if (code === 0 && m) resolve(Number(m[1]));
      else reject(new Error(`flooder exited ${code}: ${out}`));
    });
  });
}

test.serial('pipelined junk, empty objects and hellos from a reader and an allowed uid leave root answered', async (t) => {
  const sampler = sampleRootStatus(ctx.agent.socket, { intervalMs: 50 });
  const got = await Promise.all([
    flood(ctx.reader, [ctx.group.gid], 'empty', 4, 4),
    flood(ctx.allowed, [], 'junk', 4, 4),
    flood(ctx.reader, [ctx.group.gid], 'hello', 2, 4),
  ]);
  const { worstMs, samples, failures } = await sampler.stop();
  t.log(`root's worst status: ${worstMs} ms over ${samples} samples; reply bytes ${got.join(', ')}`);
  t.is(ctx.agent.proc.exitCode, null, `the agent exited:\n${ctx.agent.log().slice(-2000)}`);
  for (const g of got) t.true(g > 0, 'the flooders were answered (their lines ran)');
  t.deepEqual(failures, []);
  t.true(worstMs < 500, `root's status took ${worstMs} ms during the flood`);
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  const st = await c.request('status', {});
  t.is(st.steps, 50, 'nothing was created or removed');
});

/** The allowed uid's token bucket full again (40 tokens, 20 a second) after a test that spent it. */
const refilled = () => new Promise((r) => setTimeout(r, 2100));

test.serial('requests that carry device rules cost an allowed uid tokens: 8 in a burst, then EBUSY before any compile', (t) => {
  const deny = [...Array.from({ length: 90 }, (_, i) => `c ${i + 1}:* rwm`), ...Array.from({ length: 90 }, (_, i) => `c *:${i + 1} rwm`)];
  const out = requestsAs(ctx.allowed, ctx.agent.socket, Array.from({ length: 16 }, () => ['step.create', { job: 301, step: 0, devices: { policy: 'closed', deny } }] as [string, object]));
  const compiled = out.filter((o) => o.error?.code === 'E2BIG');
  const busy = out.filter((o) => o.error?.code === 'EBUSY');
  t.is(compiled.length + busy.length, 16, JSON.stringify(out.find((o) => !['E2BIG', 'EBUSY'].includes(o.error?.code ?? ''))));
  t.true(compiled.length >= 8, `${compiled.length} compiled`);
  t.true(busy.length >= 1, 'the uid ran out of tokens');
  t.regex(busy[0].error!.message, /is sending too fast .* retry in \d+ ms/);
});

test.serial('requests that change something cost an allowed uid a token each: a loop of them gets EBUSY, and root is never counted', async (t) => {
  await refilled();
  const [made] = requestsAs(ctx.allowed, ctx.agent.socket, [['job.create', { job: 302 }]]);
  t.true(made.ok, JSON.stringify(made.error));
  const out = requestsAs(ctx.allowed, ctx.agent.socket, Array.from({ length: 80 }, (_, i) => [i % 2 ? 'thaw' : 'freeze', { job: 302 }] as [string, object]));
  const busy = out.filter((o) => o.error?.code === 'EBUSY');
  t.true(out.filter((o) => o.ok).length >= 39, 'a burst of 40 goes through');
  t.true(busy.length >= 1, 'then the uid is over its rate');
  t.regex(busy[0].error!.message, /is sending too fast/);
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  for (let i = 0; i < 80; i++) await c.request(i % 2 ? 'thaw' : 'freeze', { job: 302 });
  await c.request('destroy', { job: 302 });
});

test.serial("a user's device rules may overlap into 512 patterns at most (their compile runs on the loop); root's into 8,192", async (t) => {
  const grid = (n: number) => [...Array.from({ length: n }, (_, i) => `c ${i + 1}:* rw`), ...Array.from({ length: n }, (_, i) => `c *:${i + 1} m`)];
  await refilled();
  const [fits, over] = requestsAs(ctx.allowed, ctx.agent.socket, [
    ['step.create', { job: 303, step: 0, devices: { deny: grid(21) } }],
    ['step.create', { job: 303, step: 1, devices: { deny: grid(23) } }],
  ]);
  t.true(fits.ok, JSON.stringify(fits.error));
  t.is(over.error?.code, 'E2BIG', JSON.stringify(over));
  t.regex(over.error!.message, /more than 512 overlapping patterns.*at most 512 for a peer that is not root or an operator/);
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  t.true((await c.request('step.create', { job: 304, step: 0, devices: { deny: grid(23) } })).created);
  await c.request('destroy', { job: 303 });
  await c.request('destroy', { job: 304 });
});

test.serial("pipelined requests whose device rules overlap (a compile of tens of ms each) from an allowed uid leave root answered", async (t) => {
  const sampler = sampleRootStatus(ctx.agent.socket, { intervalMs: 50 });
  // At nice 0: the compiles are the agent's work, not the flooder's.
  const got = await flood(ctx.allowed, [], 'devices', 30, 4, 0);
  const { worstMs, samples, failures } = await sampler.stop();
  t.log(`root's worst status: ${worstMs} ms over ${samples} samples; reply bytes ${got}`);
  t.is(ctx.agent.proc.exitCode, null, `the agent exited:\n${ctx.agent.log().slice(-2000)}`);
  t.true(got > 0, 'the flooder was answered');
  t.deepEqual(failures, []);
  t.true(worstMs < 500, `root's status took ${worstMs} ms during the flood`);
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  t.is((await c.request('status', {})).steps, 50, 'nothing was created');
});

// One connection that sends status requests until the agent stops reading, waits `secs` without reading,
// then reads every reply; prints what it sent and got.
const HOARDER = `
import socket, sys, time
path, secs = sys.argv[1], float(sys.argv[2])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
s.setblocking(False)
line = b'{"id":1,"op":"status"}\\n'
sent = 0
for _ in range(8):
    try:
        sent += s.send(line * 2800)
    except OSError:
        pass
print('sent', sent // len(line), flush=True)
time.sleep(secs)
s.setblocking(True)
s.settimeout(2)
got = b''
try:
    while got.count(b'\\n') < sent // len(line):
        d = s.recv(1 << 20)
        if not d:
            break
        got += d
except OSError:
    pass
print('got', got.count(b'\\n'), flush=True)
`;

test.serial("a reader that sends requests and never reads its replies stops being served at about a MiB of replies, and gets them all once it reads", async (t) => {
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  const ran = async () => (await c.request('status', {})).requests.requests as number;
  const before = await ran();
  const [cmd, ...args] = asUser(ctx.reader, [ctx.group.gid]);
  const p = spawn(cmd, [...args, '/usr/bin/python3', '-c', HOARDER, ctx.agent.socket, '2'], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => p.kill('SIGKILL'));
  let out = '';
  p.stdout!.on('data', (d) => (out += d));
  const exited = new Promise((r) => p.once('exit', r));
  await waitFor(() => out.includes('sent'), 10000, 'the requests to be sent');
  await new Promise((r) => setTimeout(r, 1000));
  const whileUnread = (await ran()) - before - 1;
  const replyBytes = JSON.stringify({ id: 1, ok: true, result: await c.request('status', {}) }).length;
  await exited;
  const sent = Number(/sent (\d+)/.exec(out)![1]);
  const got = Number(/got (\d+)/.exec(out)?.[1]);
  t.log(`${whileUnread} of ${sent} requests ran while their replies (${replyBytes} bytes each) went unread; ${got} replies once read`);
  // The agent reads one socket buffer of lines before it pauses; answering all of those would hold
  // thousands of replies. It stops once a MiB waits (plus what the kernel holds).
  t.true(sent > 3000, `only ${sent} lines sent`);
  t.true(whileUnread < (2 * 2 ** 20) / replyBytes, `${whileUnread} requests ran`);
  t.is(got, sent, 'every request is answered once the reader reads');
});
