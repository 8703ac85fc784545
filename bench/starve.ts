/**
 * bench/starve: root's `status` latency while unprivileged users hammer the
 * expensive reads.
 *   node --import tsx bench/starve.ts            (root; STEPS=3000,20000 by default)
 *   STEPS=3000 SECONDS=10 node --import tsx bench/starve.ts
 * For each step count: an agent with that many live steps (made through the
 * protocol), then root asks `status` every 100 ms (on a kept connection, and
 * on a new connection each time) first with nobody else, then while eight
 * read-only `list` loops and four `stats` loops run as a throwaway user in a
 * --read-only-gid group (setpriv). Prints the median, p99 and worst latency
 * of each, and what the loops got (ok / refused by the rate limit). The user
 * and group are removed at the end. Not a test: nothing asserts a timing.
 * An agent built before the socket options existed is reached by widening
 * its socket to 0666 here (the option does it now).
 */
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { CgstepClient } from '../src/rpc/client.js';
import { benchRoot, removeRoot, startAgent, summarize } from './lib.js';

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

async function sample(socket: string, seconds: number, fresh: boolean): Promise<number[]> {
  const out: number[] = [];
  const kept = fresh ? null : await CgstepClient.connect(socket, { timeoutMs: 60000 });
  const until = Date.now() + seconds * 1000;
  while (Date.now() < until) {
    const t0 = performance.now();
    const c = kept ?? (await CgstepClient.connect(socket, { timeoutMs: 60000 }));
    await c.request('status', {});
    if (!kept) c.close();
    out.push(performance.now() - t0);
    await new Promise((r) => setTimeout(r, 100));
  }
  kept?.close();
  return out;
}

const LOOP = `
const net = require('node:net');
const [sock, op, job, ms] = process.argv.slice(1);
const s = net.connect(sock);
let ok = 0, busy = 0, buf = '';
const until = Date.now() + Number(ms);
const ask = () => s.write(JSON.stringify(op === 'stats' ? { id: 1, op, job } : { id: 1, op }) + '\\n');
s.on('connect', ask);
s.on('data', (d) => {
  buf += d;
  let i;
  while ((i = buf.indexOf('\\n')) >= 0) {
    const r = JSON.parse(buf.slice(0, i)); buf = buf.slice(i + 1);
    if (r.ok) ok++; else busy++;
    if (Date.now() < until) ask(); else { console.log(op, 'ok', ok, 'refused', busy); process.exit(0); }
  }
});
s.on('error', (e) => { console.log(op, 'error', e.message, 'ok', ok); process.exit(0); });
`;

function fmt(xs: number[]): string {
  const s = summarize(xs);
  return `median ${s.median.toFixed(1)} ms, p99 ${s.p99.toFixed(1)} ms, worst ${Math.max(...xs).toFixed(1)} ms (${xs.length} samples)`;
}

async function one(n: number, user: { name: string; uid: number; gid: number }): Promise<void> {
  const root = benchRoot('starve');
  const agent = await startAgent(root, ['--read-only-gid', String(user.gid), '--max-connections', '4096']);
  try {
    const dir = agent.socket.replace(/\/[^/]*$/, '');
    fs.chmodSync(dir, 0o755);
    if ((fs.statSync(agent.socket).mode & 0o006) === 0) fs.chmodSync(agent.socket, 0o666);
    const t0 = performance.now();
    const job = await makeSteps(agent.socket, n);
    console.log(`\n${n} live steps (made in ${((performance.now() - t0) / 1000).toFixed(1)} s)`);
    const c = await CgstepClient.connect(agent.socket, { timeoutMs: 600000 });
    const t1 = performance.now();
    const l = await c.request('list', {});
    console.log(`  root's own list: ${(performance.now() - t1).toFixed(0)} ms, ${JSON.stringify(l).length} bytes`);
    c.close();
    console.log(`  status alone, kept connection:        ${fmt(await sample(agent.socket, SECONDS / 2, false))}`);
    const loops = [...Array(8).fill('list'), ...Array(4).fill('stats')].map(
      (op) =>
        new Promise<string>((resolve) => {
          const p = spawn('setpriv', ['--reuid', String(user.uid), '--regid', String(user.gid), '--clear-groups', process.execPath, '-e', LOOP, agent.socket, op, job, String(SECONDS * 1000)], { stdio: ['ignore', 'pipe', 'inherit'] });
          let out = '';
          p.stdout.on('data', (d) => (out += d));
          p.once('exit', () => resolve(out.trim()));
        }),
    );
    const [kept, fresh] = await Promise.all([sample(agent.socket, SECONDS, false), sample(agent.socket, SECONDS, true)]);
    console.log(`  status under 8 list + 4 stats loops, kept connection: ${fmt(kept)}`);
    console.log(`  status under 8 list + 4 stats loops, new connection:  ${fmt(fresh)}`);
    console.log(`  the loops: ${(await Promise.all(loops)).join('; ')}`);
  } finally {
    await agent.stop();
    await removeRoot(root);
  }
}

const name = `cgs_bench_${randomBytes(3).toString('hex')}`;
spawnSync('useradd', ['--no-create-home', '--shell', '/usr/sbin/nologin', '--user-group', name]);
const uid = Number(spawnSync('id', ['-u', name], { encoding: 'utf8' }).stdout);
const gid = Number(spawnSync('id', ['-g', name], { encoding: 'utf8' }).stdout);
try {
  for (const n of STEPS) await one(n, { name, uid, gid });
} finally {
  spawnSync('userdel', [name]);
}
