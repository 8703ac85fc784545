/**
 * bench/eventstorm: root's `status` latency while thousands of tasks end at
 * once in front of many `events` subscribers.
 *   node --import tsx bench/eventstorm.ts        (root; TASKS=2000 SUBSCRIBERS=60 by default)
 * An agent; root places TASKS sleeping processes as tasks of one job (512 a
 * request), opens SUBSCRIBERS `events` connections that read everything,
 * then kills every sleeper at once (by pid, from one `kill` process). Each ending task is a notice for
 * its leaf, its step and its job, so an event for every subscriber. Root asks
 * `status` on a kept connection (and on a new one) every 20 ms from just
 * before the kill until the subscribers have seen the last task end; prints
 * the median, p99 and worst of each, how many events the subscribers got,
 * and the agent's CPU time over the storm. On a small machine the ending
 * processes themselves take the CPUs for a while (this process's own loop
 * stalls too): root's latency then includes that wait, which the agent's CPU
 * time separates from its own work.
 * The subscribers only count lines (no JSON parse), so that this process's
 * own loop, which also times root's requests, stays free.
 * Not a test: nothing asserts a timing.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import { CgstepClient } from '../src/rpc/client.js';
import { PROTOCOL_VERSION, adminSocketPath } from '../src/rpc/version.js';
import { sleepersOfOneShell } from '../test/helpers/agent.js';
import { benchRoot, removeRoot, sampleStatus, startAgent, summarize } from './lib.js';

const TASKS = Number(process.env.TASKS ?? 2000);
const SUBSCRIBERS = Number(process.env.SUBSCRIBERS ?? 60);

function fmt(xs: number[]): string {
  const s = summarize(xs);
  return `median ${s.median.toFixed(1)} ms, p99 ${s.p99.toFixed(1)} ms, worst ${Math.max(...xs).toFixed(1)} ms (${xs.length} samples)`;
}

const root = benchRoot('eventstorm');
let procs: { shell: ChildProcess; pids: number[] } | null = null;
/** Root's sampling runs while this holds: ended before the agent stops, whatever failed. */
let going = true;
const subs: net.Socket[] = [];

/** An events subscriber on the admin socket that counts the lines it gets (the first is the subscription's reply). */
async function subscriber(socket: string, onLine: (text: string) => void): Promise<net.Socket> {
  const s = net.connect(adminSocketPath(socket));
  await new Promise((r, j) => s.once('connect', r).once('error', j));
  s.setEncoding('utf8');
  let rest = '';
  s.on('data', (d: string) => {
    const all = rest + d;
    let at = 0;
    for (let nl = all.indexOf('\n'); nl >= 0; at = nl + 1, nl = all.indexOf('\n', at)) onLine(all.slice(at, nl));
    rest = all.slice(at);
  });
  s.write(JSON.stringify({ v: PROTOCOL_VERSION, id: 1, op: 'events' }) + '\n');
  return s;
}
const agent = await startAgent(root, ['--max-connections', '4096']);

/** The agent's user+system CPU time, ms. */
function cpuMs(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(f[11]) + Number(f[12])) * 1000) / 100;
}

try {
  procs = await sleepersOfOneShell(TASKS, 3600);
  const { pids } = procs;
  const c = await CgstepClient.connect(agent.socket, { timeoutMs: 120000 });
  for (let i = 0; i < TASKS; i += 512) {
    await c.request('task.place', { job: 1, step: 0, tasks: pids.slice(i, i + 512).map((pid, k) => ({ task: i + k, pid })) });
  }
  let events = 0;
  let ended = 0;
  for (let i = 0; i < SUBSCRIBERS; i++) {
    subs.push(
      await subscriber(agent.socket, (text) => {
        events++;
        if (i === 0 && text.includes('"task.empty"')) ended++;
      }),
    );
  }
  await new Promise((r) => setTimeout(r, 200));
  events = 0;
  // A sampler still waiting when something fails (and the agent stops) must not end this process before it cleans up.
  const kept = sampleStatus(agent.socket, false, () => going, 20).catch(() => [] as number[]);
  const fresh = sampleStatus(agent.socket, true, () => going, 20).catch(() => [] as number[]);
  await new Promise((r) => setTimeout(r, 200));
  const cpu0 = cpuMs(agent.proc.pid!);
  const t0 = performance.now();
  // From another process: 2,000 kill(2) calls here would stall this loop while the processes die.
  spawn('kill', ['-KILL', ...pids.map(String)], { stdio: 'ignore' });
  const deadline = Date.now() + 60000;
  while (ended < TASKS && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  const took = performance.now() - t0;
  const cpu = cpuMs(agent.proc.pid!) - cpu0;
  going = false;
  const [k, f] = await Promise.all([kept, fresh]);
  console.log(`${TASKS} tasks ended in front of ${SUBSCRIBERS} subscribers: the first subscriber saw ${ended} task ends in ${took.toFixed(0)} ms; ${events} events in all`);
  console.log(`  root status, kept connection: ${fmt(k)}`);
  console.log(`  root status, new connection:  ${fmt(f)}`);
  console.log(`  the agent: ${cpu.toFixed(0)} ms of CPU over the storm`);
  c.close();
} finally {
  going = false;
  for (const s of subs) s.destroy();
  if (procs) {
    for (const pid of procs.pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* already ended */
      }
    }
    procs.shell.kill('SIGKILL');
  }
  await agent.stop();
  await removeRoot(root);
}
