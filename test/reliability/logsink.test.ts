/**
 * The agent's log sink (sys/logsink) against real readers: a socket (what
 * journald gives a service, and what Node's stdio pipes are) and a FIFO
 * whose reader stops reading. The writer must never wait on the reader,
 * keep every line in order while its queue has room, say how many it
 * dropped past that, write what waits at exit, and survive a reader that
 * is gone.
 */
import test from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { REPO } from '../helpers/agent.js';

const SINK = path.join(REPO, 'dist/sys/logsink.js');

/**
 * A child that writes `lines` numbered log lines of about 200 bytes through
 * a LogSink on its stdout (queue bound `max` bytes), then says on stderr
 * what the sink holds ("queued BYTES DROPPED STDOUT-TYPE") and exits at once
 * (`exit`) or when the queue is empty (and the note of dropped lines out).
 */
function writer(lines: number, max: number, exit: 'now' | 'drained', stdout: 'pipe' | number = 'pipe', padChar = 'x'): ChildProcess {
  const script = `
    const fs = require('node:fs');
    import(${JSON.stringify(SINK)}).then(({ LogSink }) => {
      const sink = new LogSink(1, ${max});
      process.on('exit', () => sink.flushSync());
      const pad = ${JSON.stringify(padChar)}.repeat(180);
      for (let i = 0; i < ${lines}; i++) sink.write(JSON.stringify({ level: 30, seq: i, pad }) + '\\n');
      const st = fs.fstatSync(1);
      process.stderr.write('queued ' + sink.pendingBytes + ' ' + sink.droppedLines + ' ' + (st.isSocket() ? 'socket' : st.isFIFO() ? 'fifo' : 'other') + '\\n');
      if (${JSON.stringify(exit)} === 'now') process.exit(0);
      const t = setInterval(() => { if (sink.pendingBytes === 0) { clearInterval(t); process.exit(0); } }, 5);
    });`;
  return spawn(process.execPath, ['-e', script], { stdio: ['ignore', stdout, 'pipe'] });
}

/** The child's "queued" line, written while nobody has read its stdout yet. */
function queued(child: ChildProcess): Promise<{ bytes: number; dropped: number; kind: string }> {
  return new Promise((resolve, reject) => {
    let err = '';
    child.stderr!.on('data', (d) => {
      err += d;
      const m = /queued (\d+) (\d+) (\w+)\n/.exec(err);
      if (m) resolve({ bytes: Number(m[1]), dropped: Number(m[2]), kind: m[3] });
    });
    child.once('exit', (code) => reject(new Error(`writer exited ${code} before it had written: ${err}`)));
  });
}

function exited(child: ChildProcess): Promise<number | null> {
  return child.exitCode !== null ? Promise.resolve(child.exitCode) : new Promise((r) => child.once('exit', (code) => r(code)));
}

function readAll(stream: NodeJS.ReadableStream): Promise<string> {
  return new Promise((resolve) => {
    let out = '';
    stream.setEncoding('utf8');
    stream.on('data', (d: string) => (out += d));
    stream.on('end', () => resolve(out));
  });
}

test('a reader that does not read: the writer goes on, queues in order, and writes everything at exit', async (t) => {
  // 4 MiB of lines: far past a socket's buffer, under the default bound (8 MiB).
  const child = writer(20_000, 8 << 20, 'now');
  child.stdout!.pause();
  // The child reports only after its last write: had a write waited for this reader, it would never report.
  const q = await queued(child);
  t.is(q.kind, 'socket');
  t.true(q.bytes > 0, 'lines wait in the queue');
  t.is(q.dropped, 0);
  child.stdout!.resume();
  const [out, code] = await Promise.all([readAll(child.stdout!), exited(child)]);
  t.is(code, 0);
  const seqs = out.trim().split('\n').map((l) => JSON.parse(l).seq as number);
  t.is(seqs.length, 20_000);
  t.true(seqs.every((s, i) => s === i), 'every line, in order');
});

test('past its bound the queue drops new lines and one line says how many, once the reader is back', async (t) => {
  const child = writer(20_000, 64 * 1024, 'drained');
  child.stdout!.pause();
  const q = await queued(child);
  t.true(q.bytes <= 64 * 1024);
  t.true(q.dropped > 0);
  child.stdout!.resume();
  const [out, code] = await Promise.all([readAll(child.stdout!), exited(child)]);
  t.is(code, 0);
  const parsed = out.trim().split('\n').map((l) => JSON.parse(l) as { seq?: number; dropped?: number; level: number });
  const note = parsed.filter((p) => p.dropped !== undefined);
  t.is(note.length, 1);
  t.is(note[0].level, 40);
  t.is(note[0].dropped, q.dropped);
  const seqs = parsed.filter((p) => p.seq !== undefined).map((p) => p.seq!);
  t.is(seqs.length + q.dropped, 20_000, 'each line either written or counted');
  t.true(seqs.every((s, i) => i === 0 || s > seqs[i - 1]), 'what was written is in order');
  t.deepEqual(seqs.slice(0, 10), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 'the first lines, not the last, are kept');
});

/** A FIFO read by a `cat` that is stopped at once: its write end, the cat, and what cat will have printed. */
async function stoppedFifo(t: { teardown: (f: () => void) => void; is: (a: unknown, b: unknown) => void }) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-logsink-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const fifo = path.join(dir, 'log');
  t.is(await exited(spawn('mkfifo', [fifo])), 0);
  const cat = spawn('cat', [fifo], { stdio: ['ignore', 'pipe', 'ignore'] });
  t.teardown(() => cat.exitCode === null && process.kill(cat.pid!, 'SIGKILL'));
  const wfd = fs.openSync(fifo, 'w'); // returns once cat has the read end open
  process.kill(cat.pid!, 'SIGSTOP');
  return { wfd, cat, out: readAll(cat.stdout!) };
}

test('a FIFO whose reader is stopped, then continued: the same (a pipe, not a socket)', async (t) => {
  const { wfd, cat, out } = await stoppedFifo(t);
  const child = writer(5_000, 8 << 20, 'now', wfd);
  fs.closeSync(wfd);
  const q = await queued(child);
  t.is(q.kind, 'fifo');
  t.true(q.bytes > 0);
  process.kill(cat.pid!, 'SIGCONT');
  t.is(await exited(child), 0);
  const seqs = (await out).trim().split('\n').map((l) => JSON.parse(l).seq as number);
  t.true(seqs.length === 5_000 && seqs.every((s, i) => s === i));
});

test('a write cut inside multi-byte characters: the rest is kept, every line arrives whole', async (t) => {
  // 200 lines of 2-byte characters, about 41,000 characters and 77,000 bytes, all in one turn: the
  // empty FIFO (64 KiB) takes 65,536 bytes, more than the turn has characters.
  const { wfd, cat, out } = await stoppedFifo(t);
  const child = writer(200, 8 << 20, 'now', wfd, 'é');
  fs.closeSync(wfd);
  t.true((await queued(child)).bytes > 0);
  process.kill(cat.pid!, 'SIGCONT');
  t.is(await exited(child), 0);
  const parsed = (await out).trim().split('\n').map((l) => JSON.parse(l) as { seq: number; pad: string });
  t.is(parsed.length, 200);
  t.true(parsed.every((p, i) => p.seq === i && p.pad === 'é'.repeat(180)), 'every line, whole and in order');
});

test('a reader that is gone: the writer neither crashes nor stops', async (t) => {
  const child = writer(20_000, 8 << 20, 'now');
  child.stdout!.destroy();
  await queued(child).catch(() => undefined);
  t.is(await exited(child), 0);
});

test('a line is written by the end of its turn, not held for more lines or for exit', async (t) => {
  const script = `import(${JSON.stringify(SINK)}).then(({ LogSink }) => { const s = new LogSink(1); s.write('one\\n'); setTimeout(() => s.write('two\\n'), 50); setInterval(() => undefined, 1000); });`;
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'ignore'] });
  t.teardown(() => child.exitCode === null && process.kill(child.pid!, 'SIGKILL'));
  let got = '';
  child.stdout!.setEncoding('utf8');
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`only ${JSON.stringify(got)} after 10 s`)), 10_000);
    child.stdout!.on('data', (d: string) => {
      got += d;
      if (got === 'one\ntwo\n') {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  t.is(got, 'one\ntwo\n');
  t.is(child.exitCode, null, 'both lines came while the writer still runs');
});
