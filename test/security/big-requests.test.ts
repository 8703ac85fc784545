/**
 * One request's device rules bound the policy compile it causes: a peer that
 * is neither root nor an operator may send at most 256 rules, root at most
 * 4,096 (the device benchmark's largest policy); more is refused with E2BIG
 * before anything is compiled or created. Likewise the tasks one task.place
 * places at once (a /proc check, a directory and a move each, in one turn of
 * the event loop): a user's up to 16, root's up to the protocol's 512.
 */
import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { makeTestRoot, removeTestRoot } from '../helpers/cgroup.js';
import { startAgent, type RunningAgent } from '../helpers/agent.js';
import { addUser, nodeAs, removeUser, spawnAs, type TestUser } from '../helpers/users.js';
import { killPid, waitFor } from '../helpers/agent.js';

const ctx: { root: string; dir: string; agent: RunningAgent; user: TestUser } = {} as any;

test.before(async () => {
  ctx.root = makeTestRoot('bigreq');
  ctx.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-bigreq-'));
  fs.chmodSync(ctx.dir, 0o755);
  ctx.user = addUser('cgs_rpc');
  ctx.agent = await startAgent({ root: ctx.root, socket: path.join(ctx.dir, 's.sock'), args: ['--ignore-systemd', '--allow-uid', String(ctx.user.uid)] });
});
test.after.always(async () => {
  await ctx.agent?.stop();
  fs.rmSync(ctx.dir, { recursive: true, force: true });
  await removeTestRoot(ctx.root);
  removeUser(ctx.user);
});

const rules = (n: number, major: number) => Array.from({ length: n }, (_, i) => `c ${major + (i >> 8)}:${i & 0xff} rwm`);

// Send one line, print the reply line.
const SEND = `
const net = require('node:net');
const s = net.connect(process.argv[1]);
let buf = '';
s.on('connect', () => s.write(process.argv[2] + '\\n'));
s.on('data', (d) => { buf += d; if (buf.includes('\\n')) { console.log(buf.split('\\n')[0]); process.exit(0); } });
`;

function sendAsUser(req: object): Promise<any> {
  const p = nodeAs(ctx.user, SEND, [ctx.agent.socket, JSON.stringify(req)]);
  let out = '';
  p.stdout!.on('data', (d) => (out += d));
  return new Promise((resolve) => p.once('exit', () => resolve(JSON.parse(out))));
}

test('a user may not send more than 256 device rules; 1,000 + 1,000 are refused before anything is made', async (t) => {
  const r = await sendAsUser({ id: 1, op: 'job.create', job: 31, devices: { allow: rules(1000, 200), deny: rules(1000, 220) } });
  t.is(r.error?.code, 'E2BIG', JSON.stringify(r));
  t.regex(r.error.message, /2000 device rules in one request; at most 256/);
  const ok = await sendAsUser({ id: 2, op: 'job.create', job: 32, devices: { deny: rules(256, 200) } });
  t.not(ok.error?.code, 'E2BIG', JSON.stringify(ok));
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  t.false((await c.request('list', {})).jobs.some((j: any) => j.job === '31'), 'job 31 was created');
});

test('root may send the 4,096 rules of the device benchmark, not one more', async (t) => {
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  const e = await t.throwsAsync(c.request('job.create', { job: 33, devices: { allow: rules(1, 199), deny: rules(4096, 200) } }));
  t.is((e as any).code, 'E2BIG');
  t.regex((e as Error).message, /4097 device rules in one request; at most 4096$/);
  // 4,096 pass the size check (what the device backend then does with them is not this test's concern).
  const r = await c.request('job.create', { job: 34, devices: { deny: rules(4096, 200) } }).catch((err: any) => err);
  t.not(r?.code, 'E2BIG', String(r?.message));
});

test("a user may place at most 16 tasks in one task.place (root more); more are refused before anything is checked or made", async (t) => {
  const sleeps = Array.from({ length: 17 }, () => spawnAs(ctx.user, ['sleep', '600']));
  t.teardown(() => sleeps.forEach((p) => killPid(p.pid)));
  await waitFor(() => sleeps.every((p) => fs.readFileSync(`/proc/${p.pid}/comm`, 'utf8').trim() === 'sleep'), 5000, 'the sleeps to exec');
  const tasks = sleeps.map((p, i) => ({ task: i, pid: p.pid! }));
  const r = await sendAsUser({ id: 1, op: 'task.place', job: 35, step: 0, tasks });
  t.is(r.error?.code, 'E2BIG', JSON.stringify(r));
  t.regex(r.error.message, /^17 tasks in one task\.place; at most 16 for a peer that is not root or an operator/);
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  t.false((await c.request('list', {})).jobs.some((j: any) => j.job === '35'), 'job 35 was created');
  const ok = await sendAsUser({ id: 2, op: 'task.place', job: 35, step: 0, tasks: tasks.slice(0, 16) });
  t.true(ok.ok, JSON.stringify(ok));
  // Root: all 17 in one request.
  t.is((await c.request('task.place', { job: 36, step: 0, tasks })).tasks.length, 17);
  for (const job of [35, 36]) await c.request('destroy', { job, force: true });
});
