/**
 * The control socket under bad input and unauthorised peers, against a real agent.
 */
import test from 'ava';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { makeTestRoot, removeTestRoot } from '../helpers/cgroup.js';
import { replyLines, startAgent, type RunningAgent } from '../helpers/agent.js';

const ctx: { root: string; agent: RunningAgent } = {} as any;

test.before(async () => {
  ctx.root = makeTestRoot('rpc');
  ctx.agent = await startAgent({ root: ctx.root, args: ['--ignore-systemd'] });
});
test.after.always(async () => {
  await ctx.agent?.stop();
  await removeTestRoot(ctx.root);
});

/** Send raw bytes, collect reply lines until `n` lines or close. */
function raw(socket: string, data: string | Buffer, n = 1): Promise<any[]> {
  const s = net.connect(socket);
  return new Promise((resolve, reject) => {
    s.on('error', reject);
    replyLines(s, data, n).then(resolve, reject);
  });
}

test('the socket is created mode 0600', (t) => {
  t.is(fs.statSync(ctx.agent.socket).mode & 0o777, 0o600);
});

test('malformed JSON, wrong types, unknown ops and unknown fields get typed errors on the same connection', async (t) => {
  const lines = await raw(
    ctx.agent.socket,
    ['{"id":1,', '[]', '{"id":2,"op":"nope"}', '{"id":3,"op":"status","extra":1}', '{"id":4,"op":"job.create","job":{}}', '{"id":5,"op":"status"}'].join('\n') + '\n',
    6,
  );
  t.is(lines.length, 6);
  const byId = new Map(lines.map((l) => [l.id, l]));
  t.is(lines.filter((l) => l.id === null && l.error.code === 'EINVAL').length, 2);
  t.is(byId.get(2).error.code, 'EINVAL');
  t.regex(byId.get(3).error.message, /unknown field\(s\) extra/);
  t.is(byId.get(4).error.code, 'EINVAL');
  t.true(byId.get(5).ok, 'a good request after bad ones on the same connection works');
});

test.serial('path tricks and out-of-range ids are refused before touching the tree', async (t) => {
  const bad = ['../x', '1/2', '', '0', '-1', '99999999999', '1e3', ' 1', '1 ', 'job_1', '4294967295'];
  const reqs = bad.map((j, i) => JSON.stringify({ id: i, op: 'job.create', job: j })).join('\n') + '\n';
  const lines = await raw(ctx.agent.socket, reqs, bad.length);
  t.is(lines.length, bad.length);
  for (const l of lines) t.is(l.error?.code, 'EINVAL', JSON.stringify(l));
  const steps = await raw(ctx.agent.socket, ['../..', 'batch/..', 'foo', '1.5', '-2'].map((s, i) => JSON.stringify({ id: i, op: 'step.create', job: 7, step: s })).join('\n') + '\n', 5);
  for (const l of steps) t.is(l.error?.code, 'EINVAL');
  const list = (await raw(ctx.agent.socket, '{"id":1,"op":"list"}\n'))[0];
  t.deepEqual(list.result.jobs, []);
});

test('an oversized line gets E2BIG and closes only that connection', async (t) => {
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  const lines = await raw(ctx.agent.socket, Buffer.alloc(200 * 1024, 'a'));
  t.is(lines[0].error.code, 'E2BIG');
  t.truthy(await c.request('status', {}));
});

test('a client of another protocol major is told both versions', async (t) => {
  const [l] = await raw(ctx.agent.socket, '{"v":"2.0","id":1,"op":"status"}\n');
  t.is(l.error.code, 'EPROTO');
  t.regex(l.error.message, /2\.0.*1\.0/);
});

test('attach refuses PID 1, the agent, the infinity process and missing pids', async (t) => {
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  await c.request('step.create', { job: 9, step: 0 });
  const st = await c.request('status', {});
  for (const pid of [1, ctx.agent.pid, st.infinityPid]) {
    const e = await t.throwsAsync(c.request('attach', { job: 9, step: 0, pid, task: 0 }));
    t.is((e as any).code, 'EPERM');
  }
  const e = await t.throwsAsync(c.request('attach', { job: 9, step: 0, pid: 0x3ffffff0, task: 0 }));
  t.is((e as any).code, 'ENOENT');
  await c.request('destroy', { job: 9 });
});

test('with root alone allowed, another uid cannot even connect (setpriv --reuid 65534)', async (t) => {
  // The directory is the test's own temp dir: open it so that the socket's own mode is what stops the peer.
  fs.chmodSync(path.dirname(ctx.agent.socket), 0o755);
  const r = spawnSync('setpriv', ['--reuid', '65534', '--regid', '65534', '--clear-groups', process.execPath, 'dist/bin/cgstep.js', '--socket', ctx.agent.socket, 'status'], { encoding: 'utf8' });
  t.is(r.status, 1, r.stderr);
  t.regex(r.stderr, /EPERM: cannot connect to cgstepd at .*EACCES/);
});


test.serial('a client that half-closes after its requests gets every reply, then the end of the stream', async (t) => {
  // As `printf ... | socat - UNIX-CONNECT:sock` does; the last line is ended by the close alone.
  const s = net.connect(ctx.agent.socket);
  t.teardown(() => s.destroy());
  await new Promise<void>((r, j) => s.once('connect', r).once('error', j));
  const reqs = ['{"id":1,"op":"job.create","job":"61"}', '{"id":2,"op":"destroy","job":"61"}', '{"id":3,"op":"list"}', '{"id":4,"op":"status"}'];
  s.end(reqs.join('\n'));
  let text = '';
  s.on('data', (d) => (text += d));
  await new Promise<void>((r, j) => s.once('end', r).once('error', j));
  const byId = new Map(text.trim().split('\n').map((l) => JSON.parse(l)).map((l) => [l.id, l]));
  t.deepEqual([...byId.keys()].sort(), [1, 2, 3, 4], text);
  for (const l of byId.values()) t.true(l.ok, JSON.stringify(l));
  const after = (await raw(ctx.agent.socket, '{"id":5,"op":"list"}\n'))[0];
  t.false(after.result.jobs.some((j: any) => j.job === '61'), 'the job made and destroyed by the half-closed client is gone');
});

test.serial("a reply reaches its client after its request's log line", async (t) => {
  // Forty requests in one write are answered within one turn of the agent's loop; each reply must follow its
  // 'job created' line to the log, so that whoever holds a reply finds the request in the journal.
  const jobs = Array.from({ length: 40 }, (_, i) => String(7100 + i));
  const logged = (): Set<string> => {
    const seen = new Set<string>();
    for (const l of ctx.agent.log().split('\n')) {
      if (!l.includes('"job created"')) continue;
      try {
        seen.add(String(JSON.parse(l).job));
      } catch {
        // a line still on its way
      }
    }
    return seen;
  };
  const s = net.connect(ctx.agent.socket);
  t.teardown(() => s.destroy());
  const early: string[] = [];
  // Registered before replyLines' own listener: it sees each chunk of replies first, with the log as it stood then.
  s.on('data', (d) => {
    const inLog = logged();
    for (const m of String(d).matchAll(/"job":"(\d+)"/g)) if (!inLog.has(m[1])) early.push(m[1]);
  });
  const replies = await replyLines(s, jobs.map((j) => JSON.stringify({ id: Number(j), op: 'job.create', job: j })).join('\n') + '\n', jobs.length);
  t.is(replies.filter((r) => r.ok && r.result.created).length, jobs.length, JSON.stringify(replies.find((r) => !r.ok)));
  t.deepEqual(early, [], 'replies that reached the client before their log line');
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  for (const job of jobs) await c.request('destroy', { job });
});

test('a request without an id is told it needs one', async (t) => {
  const [r] = await raw(ctx.agent.socket, '{"op":"status"}\n');
  t.is(r.error?.code, 'EINVAL');
  t.is(r.error?.message, 'invalid request: id: every request needs an id: a string (up to 128 characters) or an integer');
});
