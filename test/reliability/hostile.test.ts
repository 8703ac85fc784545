/**
 * Hostile input on the socket: a corpus of malformed requests, raw bytes,
 * huge and half-written lines, thousands of idle connections, a client that
 * never reads. The agent must answer every bad request with a typed error (or
 * close that connection), keep serving others, and keep its memory bounded.
 */
import test from 'ava';
import fc from 'fast-check';
import fs from 'node:fs';
import net from 'node:net';
import { makeTestRoot, removeTestRoot } from '../helpers/cgroup.js';
import { replyLines, startAgent, sleep, type RunningAgent } from '../helpers/agent.js';
import { requestSchema } from '../../src/rpc/protocol.js';
import { corpus } from './corpus.js';

const ctx: { root: string; agent: RunningAgent; peakKiB: number } = {} as any;

function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : 0;
}
function hwmKiB(pid: number): number {
  const m = /VmHWM:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : 0;
}

test.before(async () => {
  ctx.root = makeTestRoot('hostile');
  ctx.agent = await startAgent({ root: ctx.root, args: ['--ignore-systemd', '--max-connections', '3000', '--log-level', 'warn'] });
});
test.after.always(async () => {
  await ctx.agent?.stop();
  await removeTestRoot(ctx.root);
});

/** Connect, retrying EAGAIN (a full backlog) as a well-behaved client does. */
async function connect(): Promise<net.Socket> {
  for (let delay = 1; ; delay = Math.min(delay * 2, 100)) {
    try {
      return await new Promise<net.Socket>((resolve, reject) => {
        const s = net.connect(ctx.agent.socket);
        s.once('connect', () => resolve(s));
        s.once('error', reject);
      });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
      await sleep(delay);
    }
  }
}

/** Write lines on one connection and collect exactly n reply lines. */
async function exchange(data: string | Buffer, n: number, timeoutMs = 20000): Promise<any[]> {
  return replyLines(await connect(), data, n, timeoutMs);
}

test.serial('every line of a 400+ line corpus gets a typed error on one connection, and a valid request still works after it', async (t) => {
  const lines = corpus();
  t.true(lines.length >= 200, `corpus has ${lines.length} lines`);
  const replies = await exchange(lines.join('\n') + '\n{"id":"last","op":"status"}\n', lines.length + 1);
  t.is(replies.length, lines.length + 1);
  const errors = replies.slice(0, -1);
  const codes = new Set(errors.map((r) => r.error?.code));
  for (const r of errors) t.false(r.ok, JSON.stringify(r));
  t.true([...codes].every((c) => ['EINVAL', 'EPROTO', 'ENOENT', 'EPERM'].includes(c)), [...codes].join());
  t.true(replies[replies.length - 1].ok);
  t.deepEqual((await exchange('{"id":1,"op":"list"}\n', 1))[0].result.jobs, [], 'no bad request made a job');
  ctx.peakKiB = Math.max(ctx.peakKiB ?? 0, rssKiB(ctx.agent.pid));
});

test.serial('raw bytes: NUL, invalid UTF-8, a 10 MB line, a half-written line ended by the close', async (t) => {
  const bin = await exchange(Buffer.from([0x00, 0xff, 0xfe, 0x7b, 0x80, 0x0a]), 1);
  t.is(bin[0].error.code, 'EINVAL');
  const big = await exchange(Buffer.alloc(10 * 1024 * 1024, 0x61), 1);
  t.is(big[0].error.code, 'E2BIG');
  // A line cut off by the client's close is still answered (a typed error here), then the agent closes.
  const half = await connect();
  let text = '';
  half.on('data', (d) => (text += d));
  half.end('{"id":1,"op":"sta');
  await new Promise((r) => half.once('close', r));
  t.is(JSON.parse(text).error.code, 'EINVAL', text);
  t.true((await exchange('{"id":2,"op":"status"}\n', 1))[0].ok);
});

test.serial('2,000 idle connections do not stop the agent from answering', async (t) => {
  const idle: net.Socket[] = [];
  t.teardown(() => idle.forEach((s) => s.destroy()));
  for (let i = 0; i < 2000; i++) idle.push(await connect());
  const t0 = Date.now();
  const r = await exchange('{"id":1,"op":"status"}\n', 1);
  t.true(r[0].ok);
  t.true(r[0].result.connections >= 2000);
  t.true(Date.now() - t0 < 2000, `status took ${Date.now() - t0} ms with 2,000 idle connections`);
  ctx.peakKiB = Math.max(ctx.peakKiB, rssKiB(ctx.agent.pid));
});

test.serial('a client that never reads its replies is paused, then dropped; others are served meanwhile', async (t) => {
  const s = await connect();
  const flood = '{"id":1,"op":"status"}\n'.repeat(20000);
  let closed = false;
  s.on('close', () => (closed = true));
  s.on('error', () => undefined);
  s.pause();
  for (let i = 0; i < 10 && !closed; i++) s.write(flood);
  await sleep(500);
  const t0 = Date.now();
  const r = await exchange('{"id":1,"op":"list"}\n', 1);
  t.true(r[0].ok);
  t.true(Date.now() - t0 < 2000);
  s.destroy();
  const rss = rssKiB(ctx.agent.pid);
  ctx.peakKiB = Math.max(ctx.peakKiB, rss);
  t.true(rss < 400 * 1024, `agent RSS ${rss} KiB`);
});

test.serial('fuzz: random JSON values and mutations of valid requests never crash the agent', async (t) => {
  const valid = ['{"id":1,"op":"status"}', '{"id":2,"op":"job.create","job":5,"limits":{"pids":10}}', '{"id":3,"op":"stats","job":5}', '{"id":4,"op":"destroy","job":5}'];
  const samples = fc.sample(
    fc.oneof(
      fc.json().map((s) => s.replace(/\n/g, ' ')),
      fc.tuple(fc.constantFrom(...valid), fc.nat(40), fc.string({ maxLength: 4 })).map(([v, i, ins]) => (v.slice(0, i % v.length) + ins + v.slice(i % v.length)).replace(/\n/g, ' ')),
      fc.record({ id: fc.integer(), op: fc.constantFrom('job.create', 'step.create', 'attach', 'signal', 'destroy'), job: fc.anything(), step: fc.anything(), pid: fc.anything() }).map((o) => JSON.stringify(o) ?? 'null'),
    ),
    { numRuns: 1500, seed: 42 },
  );
  const lines = samples.filter((l) => l.trim() !== '');
  const replies = await exchange(lines.join('\n') + '\n', lines.length, 60000);
  t.is(replies.length, lines.length);
  for (const r of replies) t.true('ok' in r && (r.ok || typeof r.error.code === 'string'));
  t.true((await exchange('{"id":1,"op":"status"}\n', 1))[0].ok);
  // Clean what valid mutations may have made.
  await exchange('{"id":9,"op":"destroy","job":5,"force":true}\n', 1);
  ctx.peakKiB = Math.max(ctx.peakKiB, hwmKiB(ctx.agent.pid));
  t.log(`agent peak RSS during hostile input: ${Math.round(ctx.peakKiB / 1024)} MiB`);
});

test('property: the request schema never throws and accepts only well-formed ids', (t) => {
  fc.assert(
    fc.property(fc.anything(), (v) => {
      const r = requestSchema.safeParse(v);
      if (!r.success) return true;
      const req = r.data as any;
      return req.job === undefined || /^[1-9][0-9]*$/.test(req.job);
    }),
    { numRuns: 20000 },
  );
  t.pass();
});
