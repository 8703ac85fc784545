/**
 * bench/place-flood: root's `status` latency while an allowed uid sends
 * task.place in a loop, with BATCHES tasks per request (1 and 16, the most a
 * peer that is not root or an operator may send, by default; 512 is refused
 * with E2BIG for such a peer).
 *   node --import tsx bench/place-flood.ts          (root)
 *   BATCHES=1,16,512 SECONDS=8 CONNS=4 node --import tsx bench/place-flood.ts
 * A throwaway user (removed at the end) gets 512 sleeping processes and four
 * connections, each placing the first BATCH of them into its own job's steps
 * over and over; root asks `status` every 20 ms on a kept connection, first
 * with nobody else, then during the flood. Prints median, p99 and worst of
 * each, and what the flood's requests got. Not a test: nothing asserts a
 * timing.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CgstepClient } from '../src/rpc/client.js';
import { addUser, nodeAs, removeUser, spawnAs } from '../test/helpers/users.js';
import { REPO, benchRoot, removeRoot, startAgent, summarize } from './lib.js';

const BATCHES = (process.env.BATCHES ?? '1,16').split(',').map(Number);
const SECONDS = Number(process.env.SECONDS ?? 8);
const CONNS = Number(process.env.CONNS ?? 4);

const FLOOD = `
(async () => {
  const { CgstepClient } = await import(process.argv[1]);
  const [sock, pidsJson, seconds, conns, batch] = process.argv.slice(2);
  const pids = JSON.parse(pidsJson).slice(0, Number(batch));
  const end = Date.now() + Number(seconds) * 1000;
  const got = {};
  await Promise.all(Array.from({ length: Number(conns) }, async (_, k) => {
    const c = await CgstepClient.connect(sock);
    for (let j = 0; Date.now() < end; j++) {
      let r = 'ok';
      try { await c.request('task.place', { job: 700 + k, step: j % 4, tasks: pids.map((pid, i) => ({ task: i, pid })) }); } catch (e) { r = e.code; }
      got[r] = (got[r] ?? 0) + 1;
    }
    c.close();
  }));
  console.log(JSON.stringify(got));
})();
`;

async function statusLatency(c: CgstepClient, seconds: number): Promise<number[]> {
  const out: number[] = [];
  for (const end = Date.now() + seconds * 1000; Date.now() < end; ) {
    const t = performance.now();
    await c.request('status', {});
    out.push(performance.now() - t);
    await new Promise((r) => setTimeout(r, 20));
  }
  return out;
}

const line = (label: string, xs: number[]) => {
  const s = summarize(xs);
  return `${label}: root status median ${s.median.toFixed(1)} ms, p99 ${s.p99.toFixed(1)}, worst ${Math.max(...xs).toFixed(1)} (${s.n} samples)`;
};

const user = addUser('cgs_pflood');
const root = benchRoot('place-flood');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-pflood-'));
fs.chmodSync(dir, 0o755); // as /run/cgstepd: every user may reach the socket
const sleeps = Array.from({ length: 512 }, () => spawnAs(user, ['sleep', '600']));
try {
  const agent = await startAgent(root, ['--ignore-missing-controllers', '--allow-uid', String(user.uid)], dir);
  const c = await CgstepClient.connect(agent.socket);
  await new Promise((r) => setTimeout(r, 1000)); // the sleeps exec'ed
  const pids = JSON.stringify(sleeps.map((s) => s.pid));
  console.log(line('idle', await statusLatency(c, SECONDS)));
  for (const batch of BATCHES) {
    const flood = nodeAs(user, FLOOD, [path.join(REPO, 'dist/rpc/client.js'), agent.socket, pids, String(SECONDS + 1), String(CONNS), String(batch)]);
    let got = '';
    flood.stdout!.on('data', (d) => (got += d));
    const done = new Promise((r) => flood.once('exit', r));
    await new Promise((r) => setTimeout(r, 500));
    const lat = await statusLatency(c, SECONDS);
    await done;
    console.log(`${line(`${CONNS} connections placing ${batch} task(s) a request`, lat)}; their replies ${got.trim()}`);
  }
  c.close();
  await agent.stop();
} finally {
  for (const s of sleeps) if (s.pid) process.kill(s.pid, 'SIGKILL');
  await removeRoot(root);
  fs.rmSync(dir, { recursive: true, force: true });
  removeUser(user);
}
