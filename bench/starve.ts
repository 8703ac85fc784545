/**
 * bench/starve: root's `status` latency while unprivileged users hammer the
 * expensive reads: `/metrics`, `list` and `stats`.
 *   node --import tsx bench/starve.ts            (root; STEPS=3000,20000 by default)
 *   STEPS=3000 SECONDS=10 node --import tsx bench/starve.ts
 * For each step count: an agent with that many live steps (10 a job, made
 * through the protocol) and `--metrics` on a loopback port, then root asks
 * `status` every 100 ms (on a kept connection, and on a new connection each
 * time) first with nobody else, then while a throwaway user in a
 * --read-only-gid group (setpriv) runs six `/metrics` scrape loops (the
 * port is open to every local user), eight `list` loops and four `stats`
 * loops. Prints the median, p99 and worst latency of each and what the loops
 * got (ok / refused by the rate limit / scrapes served), and at the end one
 * line per step count: root's worst `status` latency under that flood. The
 * user and group are removed at the end. Not a test: nothing asserts a timing.
 */
import fs from 'node:fs';
import { CgstepClient } from '../src/rpc/client.js';
import { startReadFlood, tallyLine } from '../test/helpers/flood.js';
import { addUser, removeUser, type TestUser } from '../test/helpers/users.js';
import { benchRoot, freePort, removeRoot, sampleStatus, startAgent, summarize } from './lib.js';

const STEPS = (process.env.STEPS ?? '3000,20000').split(',').map(Number);
const SECONDS = Number(process.env.SECONDS ?? 10);

async function makeSteps(socket: string, n: number): Promise<string> {
  const conns = 8;
  const jobs = Math.ceil(n / 10);
  await Promise.all(
    Array.from({ length: conns }, async (_, k) => {
      const c = await CgstepClient.connect(socket, { timeoutMs: 600000 });
      for (let j = k; j < jobs; j += conns) await Promise.all(Array.from({ length: Math.min(10, n - j * 10) }, (_, s) => c.request('step.create', { job: 100000 + j, step: s })));
      c.close();
    }),
  );
  return '100000';
}

function sample(socket: string, seconds: number, fresh: boolean): Promise<number[]> {
  const until = Date.now() + seconds * 1000;
  return sampleStatus(socket, fresh, () => Date.now() < until, 100);
}

function fmt(xs: number[]): string {
  const s = summarize(xs);
  return `median ${s.median.toFixed(1)} ms, p99 ${s.p99.toFixed(1)} ms, worst ${Math.max(...xs).toFixed(1)} ms (${xs.length} samples)`;
}

/** The flood at n live steps; returns root's worst `status` latency under it (either connection kind). */
async function one(n: number, user: TestUser): Promise<number> {
  const root = benchRoot('starve');
  const port = await freePort();
  // The reader reaches the socket through its group, as configured on a node (--socket-group), not a chmod.
  const agent = await startAgent(root, ['--read-only-gid', String(user.gid), '--socket-group', String(user.gid), '--max-connections', '4096', '--metrics', `127.0.0.1:${port}`]);
  try {
    const dir = agent.socket.replace(/\/[^/]*$/, '');
    fs.chmodSync(dir, 0o755);
    const t0 = performance.now();
    const job = await makeSteps(agent.socket, n);
    console.log(`\n${n} live steps (made in ${((performance.now() - t0) / 1000).toFixed(1)} s)`);
    const c = await CgstepClient.connect(agent.socket, { timeoutMs: 600000 });
    const t1 = performance.now();
    const l = await c.request('list', {});
    console.log(`  root's own list: ${(performance.now() - t1).toFixed(0)} ms, ${JSON.stringify(l).length} bytes`);
    c.close();
    const t2 = performance.now();
    const body = await (await fetch(`http://127.0.0.1:${port}/metrics`)).arrayBuffer();
    console.log(`  root's own first scrape (a snapshot refresh): ${(performance.now() - t2).toFixed(0)} ms, ${body.byteLength} bytes`);
    console.log(`  status alone, kept connection:        ${fmt(await sample(agent.socket, SECONDS / 2, false))}`);
    const flood = startReadFlood(user, [], agent.socket, { scrapes: 6, lists: 8, stats: 4, metricsPort: port, job, ms: SECONDS * 1000 });
    await flood.ready;
    const [kept, fresh] = await Promise.all([sample(agent.socket, SECONDS, false), sample(agent.socket, SECONDS, true)]);
    console.log(`  status under the flood, kept connection: ${fmt(kept)}`);
    console.log(`  status under the flood, new connection:  ${fmt(fresh)}`);
    console.log(`  the flood got: ${tallyLine(await flood.done)}`);
    return Math.max(...kept, ...fresh);
  } finally {
    await agent.stop();
    await removeRoot(root);
  }
}

const user = addUser('cgs_bench');
const worst: [number, number][] = [];
try {
  for (const n of STEPS) worst.push([n, await one(n, user)]);
} finally {
  removeUser(user);
}
console.log('');
for (const [n, w] of worst) console.log(`root's worst status latency while an unprivileged user hammers /metrics (6 loops), list (8) and stats (4) at ${n} live steps: ${w.toFixed(1)} ms`);
