/**
 * Every line of the hostile-input corpus (corpus.ts) that the agent refuses
 * leaves the tree exactly as it was: directories, processes, limit files,
 * device programs by id and their policy xattrs (test/helpers/snapshot.ts),
 * with a job, a step and a placed process in the tree while they arrive.
 */
import test from 'ava';
import net from 'node:net';
import readline from 'node:readline';
import path from 'node:path';
import { makeTestRoot, removeTestRoot } from '../helpers/cgroup.js';
import { startAgent, type RunningAgent } from '../helpers/agent.js';
import { gate } from '../helpers/gate.js';
import { snapshotTree } from '../helpers/snapshot.js';
import { Prober, kernelSkipReason } from '../devices/helpers.js';
import type { CgstepClient } from '../../src/rpc/client.js';
import { corpus } from './corpus.js';

const skip = kernelSkipReason();
const kt = gate('BPF device control', { ok: !skip, reason: skip }, import.meta.url).test;

const ctx: { root: string; agent: RunningAgent; scope: string; c: CgstepClient; probers: Prober[] } = { probers: [] } as any;

test.before(async () => {
  if (skip) return;
  ctx.root = makeTestRoot('refused');
  ctx.agent = await startAgent({ root: ctx.root, args: ['--ignore-systemd', '--node-name', 'n1', '--log-level', 'warn'] });
  ctx.scope = path.join(ctx.root, 'system.slice', 'n1_slurmstepd.scope');
  ctx.c = await ctx.agent.client();
});

test.after.always(async () => {
  for (const p of ctx.probers) await p.kill();
  ctx.c?.close();
  await ctx.agent?.stop();
  if (ctx.root) await removeTestRoot(ctx.root);
});

async function prober(): Promise<Prober> {
  const p = await Prober.start();
  ctx.probers.push(p);
  return p;
}

kt('every refused line of the hostile-input corpus leaves the tree exactly as before', async (t) => {
  const p = await prober();
  await ctx.c.request('task.place', { job: '1', step: '0', pid: p.pid, task: 0, stepDevices: { deny: ['c 1:5 w'] } });
  const s = net.connect(ctx.agent.socket);
  const rl = readline.createInterface({ input: s });
  const replies: string[] = [];
  const waiting: ((l: string) => void)[] = [];
  rl.on('line', (l) => (waiting.length ? waiting.shift()!(l) : replies.push(l)));
  const next = () => new Promise<string>((resolve) => (replies.length ? resolve(replies.shift()!) : waiting.push(resolve)));
  await new Promise((r) => s.once('connect', r));
  const lines = corpus();
  let n = 0;
  // Each line is checked against the tree as it was before it: while nothing
  // changes, that is the tree before the first line.
  let before = snapshotTree(ctx.scope);
  for (const line of lines) {
    s.write(line + '\n');
    const reply = JSON.parse(await next());
    if (reply.ok) {
      before = snapshotTree(ctx.scope); // a line the agent accepted is not a refusal
      continue;
    }
    t.deepEqual(snapshotTree(ctx.scope), before, line);
    n++;
  }
  s.destroy();
  t.log(`${n} of ${lines.length} corpus lines refused, each leaving the tree unchanged`);
  t.is(n, lines.length, 'every corpus line is refused');
  await ctx.c.request('destroy', { job: '1', force: true });
});

