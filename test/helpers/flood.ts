/**
 * test/helpers/flood: the expensive-read flood an unprivileged user can aim at
 * the agent, for the security tests and bench/starve: `list` and `stats`
 * loops on their own connections, each asking again as soon as its answer is
 * in, and optionally `/metrics` scrape loops (each body read to its end and
 * dropped, as `while curl ...` does). One node process as the user (setpriv):
 * its start-up happens before the caller starts timing, not during it.
 */
import { nodeAs, type Groups } from './users.js';

export interface ReadFlood {
  /** How many `list` loops, `stats` loops (on `job`) and `/metrics` scrape loops (on 127.0.0.1:metricsPort). */
  lists: number;
  stats: number;
  scrapes?: number;
  job?: string;
  metricsPort?: number;
  /** How long the loops keep asking. */
  ms: number;
}

/**
 * What the loops got, by "op outcome": "list ok", "stats EBUSY", "/metrics ok",
 * "list connection error", "list closed early", "list unanswered" (a loop
 * still waiting 30 s after its time was up)...
 */
export type FloodTally = Record<string, number>;

const FLOOD = `
const http = require('node:http');
const net = require('node:net');
const [sock, port, job, ms, scrapes, lists, stats] = process.argv.slice(1);
const until = Date.now() + Number(ms);
const count = {};
const tally = (k) => (count[k] = (count[k] || 0) + 1);
let running = 0;
const open = new Map();
const end = () => { for (const op of open.values()) tally(op + ' unanswered'); console.log(JSON.stringify(count)); process.exit(0); };
const finished = () => { if (--running === 0) end(); };
function scrapeLoop() {
  if (Date.now() >= until) return finished();
  http.get({ host: '127.0.0.1', port, path: '/metrics', agent: false }, (res) => {
    res.on('data', () => {});
    res.on('end', () => { tally(res.statusCode === 200 ? '/metrics ok' : '/metrics failed'); scrapeLoop(); });
  }).on('error', () => { tally('/metrics failed'); setTimeout(scrapeLoop, 10); });
}
function rpcLoop(op) {
  const s = net.connect(sock);
  let buf = '', done = false;
  const me = {};
  open.set(me, op);
  const stop = () => { if (!done) { done = true; open.delete(me); s.destroy(); finished(); } };
  const ask = () => { if (Date.now() < until) s.write(JSON.stringify(op === 'stats' ? { id: 1, op, job } : { id: 1, op }) + '\\n'); else stop(); };
  s.on('connect', ask);
  s.on('data', (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\\n')) >= 0) {
      const r = JSON.parse(buf.slice(0, i)); buf = buf.slice(i + 1);
      tally(op + (r.ok ? ' ok' : ' ' + r.error.code));
      ask();
    }
  });
  s.on('error', () => { tally(op + ' connection error'); stop(); });
  s.on('close', () => { if (!done && Date.now() < until) tally(op + ' closed early'); stop(); });
}
const loops = [...Array(Number(scrapes)).fill(scrapeLoop), ...Array(Number(lists)).fill(() => rpcLoop('list')), ...Array(Number(stats)).fill(() => rpcLoop('stats'))];
running = loops.length;
for (const l of loops) l();
console.log('ready');
if (running === 0) end();
setTimeout(end, Number(ms) + 30000);
`;

/**
 * Start the flood as u against the agent's socket: `ready` once every loop
 * has started, `done` with what they got once their time is up (rejects if
 * the process fails).
 */
export function startReadFlood(u: { uid: number; gid: number }, groups: Groups, socket: string, f: ReadFlood): { ready: Promise<void>; done: Promise<FloodTally> } {
  const p = nodeAs(u, FLOOD, [socket, String(f.metricsPort ?? 0), f.job ?? '', String(f.ms), String(f.scrapes ?? 0), String(f.lists), String(f.stats)], {}, groups);
  let out = '';
  let err = '';
  let onReady: () => void = () => undefined;
  const ready = new Promise<void>((resolve) => (onReady = resolve));
  p.stdout!.on('data', (d) => {
    out += d;
    if (/^ready$/m.test(out)) onReady();
  });
  p.stderr!.on('data', (d) => (err += d));
  const done = new Promise<FloodTally>((resolve, reject) =>
    p.once('exit', (code) => {
      onReady();
      const last = out.trim().split('\n').pop() ?? '';
      if (code === 0 && last.startsWith('{')) resolve(JSON.parse(last));
      else reject(new Error(`the flood as uid ${u.uid} failed (exit ${code}): ${out}${err}`));
    }),
  );
  return { ready, done };
}

/** A tally on one line: "list ok 120, list EBUSY 3, stats ok 40". */
export function tallyLine(t: FloodTally): string {
  return Object.entries(t).map(([k, v]) => `${k} ${v}`).join(', ');
}
