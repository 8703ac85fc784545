/**
 * Floods by local users against an agent with 3,000 live steps, each while
 * root's status is timed: read-only users looping on list and stats (big
 * replies), a refused uid holding 1,100 connections open (connection slots),
 * an allowed uid opening more connections than its share, and a half-sent
 * request line left hanging (slowloris). Root must be answered within 500 ms
 * throughout, and nothing in the tree may change.
 */
import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { makeTestRoot, removeTestRoot } from '../helpers/cgroup.js';
import { startAgent, type RunningAgent } from '../helpers/agent.js';
import { startReadFlood, tallyLine } from '../helpers/flood.js';
import { addGroup, addUser, nodeOutputAs, removeGroup, removeUser, type TestUser } from '../helpers/users.js';
import { makeSteps, rawConnect, sampleRootStatus } from './helpers.js';

const STEPS = 3000;
const ctx: { root: string; dir: string; agent: RunningAgent; readers: TestUser[]; allowed: TestUser; stranger: TestUser; group: { name: string; gid: number }; jobs: string[] } = {} as any;

test.before(async () => {
  ctx.root = makeTestRoot('floods');
  ctx.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-floods-'));
  fs.chmodSync(ctx.dir, 0o755);
  ctx.group = addGroup('cgs_rpc');
  ctx.readers = [addUser('cgs_rpc'), addUser('cgs_rpc'), addUser('cgs_rpc'), addUser('cgs_rpc')];
  ctx.allowed = addUser('cgs_rpc');
  ctx.stranger = addUser('cgs_rpc');
  ctx.agent = await startAgent({
    root: ctx.root,
    socket: path.join(ctx.dir, 's.sock'),
    args: ['--ignore-systemd', '--log-level', 'warn', '--idle-timeout', '3000', '--allow-uid', String(ctx.allowed.uid), '--read-only-gid', String(ctx.group.gid)],
  });
  ctx.jobs = await makeSteps(ctx.agent.socket, STEPS);
});
test.after.always(async () => {
  await ctx.agent?.stop();
  fs.rmSync(ctx.dir, { recursive: true, force: true });
  await removeTestRoot(ctx.root);
  for (const u of [...(ctx.readers ?? []), ctx.allowed, ctx.stranger]) removeUser(u);
  removeGroup(ctx.group);
});

/** Run a plain-node script as u (argv: socket, then args); resolves with its output. */
const runAs = (u: TestUser, groups: number[], script: string, args: string[]) => nodeOutputAs(u, groups, script, [ctx.agent.socket, ...args]);

test.serial('eight read-only list loops and four stats loops do not delay root', async (t) => {
  const sampler = sampleRootStatus(ctx.agent.socket);
  const floods = ctx.readers.map((r) => startReadFlood(r, [ctx.group.gid], ctx.agent.socket, { lists: 2, stats: 1, job: ctx.jobs[0], ms: 4000 }));
  const outs = await Promise.all(floods.map((f) => f.done));
  const { worstMs, samples, failures } = await sampler.stop();
  t.log(`root's worst status: ${worstMs} ms over ${samples} samples; loops: ${outs.map(tallyLine).join(' | ')}`);
  t.deepEqual(failures, []);
  t.true(worstMs < 500, `root's status took ${worstMs} ms`);
  // Answered, or refused by the rate limit: nothing else (no connection dropped, no other error).
  t.true(outs.every((o) => Object.keys(o).every((k) => /^(list|stats) (ok|EBUSY)$/.test(k))), outs.map(tallyLine).join('\n'));
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  t.is((await c.request('status', {})).steps, STEPS);
});

// Open n connections and send nothing on them for ms; print how many the agent refused and closed.
const HOLD = `
const net = require('node:net');
const [sock, n, ms] = process.argv.slice(1);
let open = 0, refused = 0, closed = 0;
const all = [];
for (let i = 0; i < Number(n); i++) {
  const s = net.connect(sock);
  s.on('connect', () => open++);
  s.on('data', (d) => { if (String(d).includes('"ok":false')) refused++; });
  s.on('close', () => closed++);
  s.on('error', () => {});
  all.push(s);
}
setTimeout(() => { console.log('open', open, 'refused', refused, 'closed', closed); process.exit(0); }, Number(ms));
`;

test.serial('a refused uid holding 1,100 connections takes no slot; an allowed uid gets only its share', async (t) => {
  const sampler = sampleRootStatus(ctx.agent.socket, { fresh: true });
  const [stranger, allowed] = await Promise.all([runAs(ctx.stranger, [], HOLD, ['1100', '3000']), runAs(ctx.allowed, [], HOLD, ['100', '3000'])]);
  const { worstMs, samples, failures } = await sampler.stop();
  t.log(`root's worst status (new connection each time): ${worstMs} ms over ${samples} samples; stranger: ${stranger.trim()}; allowed: ${allowed.trim()}`);
  t.deepEqual(failures, []);
  t.true(worstMs < 500, `root's status took ${worstMs} ms`);
  t.regex(stranger, /refused 1100 closed 1100/);
  t.regex(allowed, /open 100 refused 68 /, 'an allowed uid keeps 32 connections and is told why for the rest');
});

test.serial('a request line left half-sent, and an idle connection, are closed for non-admin peers', async (t) => {
  const half = `
const net = require('node:net');
const s = net.connect(process.argv[1]);
const t0 = Date.now();
s.on('connect', () => s.write(process.argv[2] === 'half' ? '{"id":1,"op":"sta' : ''));
s.on('close', () => { console.log('closed after', Date.now() - t0); process.exit(0); });
s.on('error', () => {});
setTimeout(() => { console.log('still open'); process.exit(0); }, 8000);
`;
  const [h, idle] = await Promise.all([runAs(ctx.readers[0], [ctx.group.gid], half, ['half']), runAs(ctx.allowed, [], half, ['idle'])]);
  t.regex(h, /closed after \d+/);
  t.regex(idle, /closed after \d+/);
  // Root's own connections are never timed out.
  const s = await rawConnect(ctx.agent.socket);
  t.teardown(() => s.destroy());
  s.write('{"id":1,"op":"sta');
  await new Promise((r) => setTimeout(r, 4000));
  t.false(s.destroyed || s.readableEnded, "root's half-sent line was cut off");
});
