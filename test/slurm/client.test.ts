/**
 * The SPANK plugin's own C code outside Slurm (test/slurm/spank-driver.c
 * includes native/spank/cgstep_spank.c): its reply reader against JSON.parse
 * (fast-check), its socket client against servers that split, batch, delay,
 * mislabel, flood or drop replies or run as another user, slurmd's epilog,
 * and whole steps with the callbacks in Slurm 22.05's order (init, forked
 * tasks held before exec, post_fork, exit) against scripted agents and a real
 * cgstepd, forged GPU variables included. Needs only gcc and Slurm's headers.
 */
import test from 'ava';
import fc from 'fast-check';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { slurmSupport } from '../harness/slurm.js';
import { startAgent, type RunningAgent } from '../helpers/agent.js';
import { gate } from '../helpers/gate.js';
import { MOUNT, makeTestRoot, removeTestRoot } from '../helpers/cgroup.js';
import { PYTHON, lineServer, until } from './helpers.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(here, '../..');
const { ok: slurmOk, test: cTest } = gate('Slurm headers', slurmSupport(), import.meta.url);

let dir: string;
let driver: string;
let gresGpu: string;

test.before(() => {
  if (!slurmOk) return;
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-spank-driver-'));
  driver = path.join(dir, 'driver');
  const r = spawnSync(process.env.CC ?? 'cc', ['-O1', '-g', '-Wall', '-Wextra', '-Werror', '-Wno-unused-parameter', '-std=gnu11', `-I${path.join(REPO, 'native/spank')}`, '-o', driver, path.join(here, 'spank-driver.c'), ...['client.c', 'json.c'].map((f) => path.join(REPO, 'native/spank', f))], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`building the driver failed:\n${r.stderr}`);
  // Stands in for Slurm's gres/gpu plugin in slurmstepd: only its name in /proc/self/maps matters.
  gresGpu = path.join(dir, 'gres_gpu.so');
  const so = spawnSync(process.env.CC ?? 'cc', ['-shared', '-fPIC', '-o', gresGpu, '-x', 'c', '-'], { input: 'int cgstep_test_gres_gpu;\n', encoding: 'utf8' });
  if (so.status !== 0) throw new Error(`building the stand-in gres_gpu.so failed:\n${so.stderr}`);
});

test.after.always(() => {
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

interface Parsed { rc: number; ok: number; id: number; code: string; message: string; devicesIgnored: string }

function parseLines(lines: string[]): Parsed[] {
  const r = spawnSync(driver, ['parse'], { input: lines.map((l) => l + '\n').join(''), encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`driver parse: ${r.stderr}`);
  return r.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));
}

/** What the plugin keeps of a string: at most 1023 (code: 63) bytes, cut at a character. */
function truncated(s: string, max: number): string {
  let out = '';
  for (const ch of s) {
    const c = (ch.length === 1 && ch >= '\ud800' && ch <= '\udfff') || ch === '\0' ? '\ufffd' : ch;
    if (Buffer.byteLength(out + c) > max) break;
    out += c;
  }
  return out;
}

cTest('the reply reader agrees with JSON.parse on replies the agent can send', (t) => {
  const reply = fc.record(
    {
      id: fc.integer({ min: 0, max: 2 ** 31 }),
      ok: fc.boolean(),
      result: fc.oneof(fc.jsonValue({ maxDepth: 4 }), fc.record({ devicesIgnored: fc.string({ maxLength: 60 }), x: fc.jsonValue({ maxDepth: 3 }) })),
      error: fc.record({ code: fc.string({ maxLength: 40 }), message: fc.string({ unit: 'binary', maxLength: 300 }), detail: fc.jsonValue({ maxDepth: 3 }) }),
    },
    { requiredKeys: ['id', 'ok'] },
  );
  const samples = fc.sample(reply, 400);
  const lines = samples.map((r) => JSON.stringify(r));
  const out = parseLines(lines);
  t.is(out.length, samples.length);
  samples.forEach((r, i) => {
    const p = out[i];
    const what = lines[i];
    t.is(p.rc, 0, what);
    t.is(p.ok, r.ok ? 1 : 0, what);
    t.is(p.id, r.id, what);
    const err = r.error as { code?: string; message?: string } | undefined;
    t.is(p.code, truncated(err?.code ?? '', 63), what);
    t.is(p.message, truncated(err?.message ?? '', 1023), what);
    const res = r.result as { devicesIgnored?: unknown } | undefined;
    t.is(p.devicesIgnored, res && typeof res === 'object' && typeof res.devicesIgnored === 'string' ? truncated(res.devicesIgnored, 511) : '', what);
  });
});

cTest('the reply reader refuses what is not a reply: truncated objects, bad numbers and escapes, no ok, junk after', (t) => {
  const good = JSON.stringify({ id: 12, ok: false, error: { code: 'EINVAL', message: 'bad "x"' }, result: { a: [1, 2.5e-3, null, true, { b: 'c' }] } });
  const prefixes = Array.from({ length: good.length - 1 }, (_, i) => good.slice(0, i + 1));
  const bad = [
    ...prefixes,
    '{"id":1,"ok":true,"x":1-2}',
    '{"id":1,"ok":true,"x":01}',
    '{"id":1,"ok":true,"x":1.}',
    '{"id":1,"ok":true,"x":.5}',
    '{"id":1,"ok":true,"x":"\\x"}',
    '{"id":1,"ok":true,"x":"\\u12"}',
    '{"id":1,"ok":true,"x":"a\tb"}',
    '{"id":1,"ok":"true"}',
    '{"id":1}',
    '{"id":1,"ok":true} x',
    '{"id":1,"ok":true,}',
    '{"id":1 "ok":true}',
    '[{"id":1,"ok":true}]',
    'null',
    '',
    '{"id":1,"ok":true,"x":' + '['.repeat(100) + ']'.repeat(100) + '}',
  ];
  const out = parseLines(bad);
  t.is(out.length, bad.length);
  bad.forEach((l, i) => t.is(out[i].rc, -1, JSON.stringify(l)));
  // And anything it accepts, JSON.parse accepts as an object with a boolean ok.
  fc.assert(
    fc.property(fc.array(fc.oneof(fc.string(), fc.json(), fc.constantFrom(good, '{"ok":true}', '{"ok":false,"error":7}')), { minLength: 50, maxLength: 50 }), (ls) => {
      const clean = ls.map((l) => l.replace(/\n/g, ' '));
      const res = parseLines(clean);
      return res.every((p, i) => {
        if (p.rc !== 0) return true;
        const v = JSON.parse(clean[i]);
        return v !== null && typeof v === 'object' && !Array.isArray(v) && typeof v.ok === 'boolean' && (v.ok ? 1 : 0) === p.ok;
      });
    }),
    { numRuns: 20 },
  );
});

/** A scripted server: handler(line, socket) per request line. */
async function withServer(handler: (req: any, s: net.Socket) => void, fn: (sock: string) => Promise<void>): Promise<void> {
  const sock = path.join(dir, `s${Math.random().toString(36).slice(2)}.sock`);
  const server = await lineServer(sock, (line, s) => handler(JSON.parse(line), s));
  try {
    await fn(sock);
  } finally {
    await server.close();
  }
}

interface CallOut { rc: number; err: string; us: number }

function call(sock: string, ms: number, bodies: string[]): Promise<{ open?: number; err?: string; calls: CallOut[]; wallMs: number }> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const p = spawn(driver, ['call', sock, String(ms), ...bodies], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.on('error', reject);
    p.on('close', () => {
      const lines = out.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));
      const wallMs = performance.now() - t0;
      if (lines[0] && 'open' in lines[0]) resolve({ ...lines[0], calls: [], wallMs });
      else resolve({ calls: lines, wallMs });
    });
  });
}

const HELLO = '"op":"hello"';

cTest('client: a reply split into single bytes, and two replies in one write, are read line by line', async (t) => {
  await withServer(
    (req, s) => {
      const line = (id: number) => JSON.stringify({ id, ok: true, result: { n: id } }) + '\n';
      if (req.id === 1) {
        const text = line(1);
        let i = 0;
        const tick = () => {
          if (i < text.length) {
            s.write(text[i++]);
            setTimeout(tick, 1);
          }
        };
        tick();
      } else if (req.id === 2) {
        // 2's reply and, ahead of time, 3's: the client must keep the rest of the read.
        s.write(line(2) + line(3));
      }
      // 3: nothing more is sent.
    },
    async (sock) => {
      const r = await call(sock, 3000, [HELLO, HELLO, HELLO]);
      t.deepEqual(r.calls.map((c) => [c.rc, c.err]), [[0, ''], [0, ''], [0, '']], JSON.stringify(r));
    },
  );
});

cTest('client: a reply with another id, a malformed reply, a closed connection and silence are errors, each saying which', async (t) => {
  await withServer(
    (req, s) => s.write(JSON.stringify({ id: req.id + 1, ok: true, result: {} }) + '\n'),
    async (sock) => {
      const r = await call(sock, 2000, [HELLO]);
      t.is(r.calls[0].rc, -1);
      t.is(r.calls[0].err, 'reply for request 2 while waiting for 1');
    },
  );
  await withServer(
    (_req, s) => s.write('{"id":1,"ok":tru}\n'),
    async (sock) => {
      const r = await call(sock, 2000, [HELLO]);
      t.is(r.calls[0].err, 'malformed reply from cgstepd');
    },
  );
  await withServer(
    (_req, s) => s.destroy(),
    async (sock) => {
      const r = await call(sock, 2000, [HELLO]);
      t.is(r.calls[0].err, 'cgstepd closed the connection before replying');
    },
  );
  await withServer(
    () => undefined,
    async (sock) => {
      const r = await call(sock, 300, [HELLO]);
      t.is(r.calls[0].err, 'no reply within 300 ms');
      t.true(r.wallMs >= 290 && r.wallMs < 2000, `took ${r.wallMs} ms`);
    },
  );
  await withServer(
    (_req, s) => s.write('x'.repeat(70 * 1024)),
    async (sock) => {
      const r = await call(sock, 2000, [HELLO]);
      t.is(r.calls[0].err, 'reply line longer than 65536 bytes');
    },
  );
  const r = await call(path.join(dir, 'nothing-here.sock'), 1000, [HELLO]);
  t.is(r.open, -1);
  t.is(r.err, 'cannot connect: No such file or directory (is cgstepd running?)');
  const long = await call('/' + 'x'.repeat(120), 1000, [HELLO]);
  t.is(long.err, 'socket path too long');
});

cTest('client: a stray line before the reply (an event) is not taken for it', async (t) => {
  await withServer(
    (req, s) => s.write(JSON.stringify({ event: 'oom', job: '1' }) + '\n' + JSON.stringify({ id: req.id, ok: true, result: {} }) + '\n'),
    async (sock) => {
      const r = await call(sock, 2000, [HELLO]);
      // The plugin never subscribes to events, so a line without ok is a protocol error.
      t.is(r.calls[0].rc, -1);
      t.is(r.calls[0].err, 'malformed reply from cgstepd');
    },
  );
});

/**
 * A line server that answers ok to everything, run as uid 65534 (another
 * user who bound the path first); lines() is what it received.
 */
async function foreignServer(): Promise<{ sock: string; lines: () => string[]; stop: () => Promise<void> }> {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-foreign-'));
  fs.chownSync(d, 65534, 65534);
  const sock = path.join(d, 'agent.sock');
  const code = [
    'import json, os, socket, sys',
    's = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(8)',
    'print("up", flush=True)',
    'while True:',
    '    c, _ = s.accept(); f = c.makefile("rb")',
    '    for line in f:',
    '        print(line.decode().strip(), flush=True)',
    '        c.sendall((json.dumps({"id": json.loads(line)["id"], "ok": True, "result": {}}) + "\\n").encode())',
    '    c.close()',
  ].join('\n');
  const p = spawn('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', PYTHON, '-c', code, sock], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  p.stdout.on('data', (d) => (out += d));
  await until(() => out.startsWith('up\n') || p.exitCode !== null, 10_000, 'the foreign server to listen');
  if (p.exitCode !== null) throw new Error('the foreign server exited');
  return {
    sock,
    lines: () => out.split('\n').slice(1).filter(Boolean),
    stop: async () => {
      if (p.exitCode === null) {
        p.kill('SIGKILL');
        await new Promise((r) => p.once('exit', r));
      }
      fs.rmSync(d, { recursive: true, force: true });
    },
  };
}

/** What one `driver step` printed: the tasks that ran, those that ended themselves, other lines, and the summary. */
interface StepOut {
  init: number;
  exit: number;
  errors: string[];
  tasks: { task: number; pid: number; exit: number; signal: number }[];
  ran: { task: number; cgroup: string }[];
  exited: { exited: number; errors: string[] }[];
  other: any[];
}

/** One slurmstepd's step through the plugin (driver step), as Slurm 22.05 orders the callbacks. */
function step(args: string[], env: Record<string, string>, prefix: string[] = []): Promise<StepOut> {
  return new Promise((resolve, reject) => {
    const argv = [...prefix, driver, 'step', ...args];
    const p = spawn(argv[0], argv.slice(1), { env: { PATH: process.env.PATH!, ...env }, stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.on('error', reject);
    p.on('close', () => {
      const lines = out.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));
      const summary = lines.find((l) => 'init' in l);
      if (!summary) return reject(new Error(`driver step printed no summary: ${out}`));
      resolve({
        ...summary,
        ran: lines.filter((l) => l.ran),
        exited: lines.filter((l) => 'exited' in l),
        other: lines.filter((l) => !('init' in l) && !l.ran && !('exited' in l)),
      });
    });
  });
}

function epilog(args: string[], env: Record<string, string>): Promise<{ rc: number; errors: string[] }> {
  return new Promise((resolve, reject) => {
    const p = spawn(driver, ['epilog', ...args], { env: { PATH: process.env.PATH!, ...env }, stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.on('error', reject);
    p.on('close', () => resolve(JSON.parse(out.trim().split('\n').pop()!)));
  });
}

/** A scripted agent recording each request with its connection's number. */
async function recorder(reply: (req: any, n: number, s: net.Socket) => boolean | void = () => undefined) {
  const seen: { req: any; conn: number }[] = [];
  const conns = new Map<net.Socket, number>();
  const sock = path.join(dir, `r${Math.random().toString(36).slice(2)}.sock`);
  const server = await lineServer(sock, (line, s) => {
    if (!conns.has(s)) conns.set(s, conns.size);
    const req = JSON.parse(line);
    seen.push({ req, conn: conns.get(s)! });
    if (!reply(req, seen.length - 1, s)) s.write(JSON.stringify({ id: req.id, ok: true, result: {} }) + '\n');
  });
  return { sock, seen, reqs: () => seen.map((x) => x.req), close: () => server.close() };
}

cTest('client: a server that is not root (nor agent_uid=) is refused before any request; the task fails closed saying so', async (t) => {
  const f = await foreignServer();
  t.teardown(f.stop);
  const r = await call(f.sock, 2000, [HELLO]);
  t.is(r.open, -1);
  t.regex(r.err!, /^refusing the server: it runs as uid 65534 \(pid \d+\), not as root \(agent_uid= unset\); not cgstepd, or agent_uid= in plugstack.conf must name its uid$/);
  const s = await step([`socket=${f.sock}`], {});
  t.deepEqual(s.ran, [], 'the task never ran');
  t.is(s.exited[0].exited, 1);
  t.regex(s.exited[0].errors[0], new RegExp(`^cgstep: placing the task for job 1 step 0 failed \\(cgstepd at ${f.sock.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: refusing the server: it runs as uid 65534 .*\\); task not started \\(failure=closed\\)$`));
  t.deepEqual(f.lines(), [], 'nothing was sent to it');
  // Named as the agent's uid, it is accepted.
  const ok = await step([`socket=${f.sock}`, 'agent_uid=65534', 'devices=no'], {});
  t.is(ok.ran.length, 1, JSON.stringify(ok));
  t.true(f.lines().length > 0);
  const bad = await step(['agent_uid=x'], {});
  t.regex(bad.errors[0], /agent_uid= needs a numeric uid, got "x"/);
});

cTest("one step of three tasks: one task.place of the step daemon (with the job limits), then one task.place of all the step's tasks from the parent at the last post_fork, all on one connection, destroy last", async (t) => {
  const r = await recorder();
  t.teardown(r.close);
  const env = { DRV_JOB: '5', DRV_STEP: '2', DRV_TASK: '4', DRV_UID: '1234', DRV_NTASKS: '3', DRV_JOB_MEM: '1024', DRV_STEP_MEM: '512', SLURM_STEP_GPUS: '1,3', DRV_GRES_GPU: gresGpu };
  const s = await step([`socket=${r.sock}`, 'cpus=no'], env);
  t.deepEqual(s.errors, []);
  t.deepEqual(s.ran.map((x) => x.task).sort(), [0, 1, 2]);
  const reqs = r.reqs();
  t.deepEqual(reqs.map((q) => q.op), ['task.place', 'task.place', 'destroy']);
  t.deepEqual(new Set(r.seen.map((x) => x.conn)), new Set([0]), 'one connection');
  t.like(reqs[0], { job: '5', step: '2', leaf: 'slurm', owner: 1234, jobLimits: { memory: 1024 * 2 ** 20 }, stepLimits: { memory: 512 * 2 ** 20 }, jobDevices: { gres: ['gpu:1', 'gpu:3'] }, stepDevices: { gres: ['gpu:1', 'gpu:3'] } });
  t.deepEqual(Object.keys(reqs[1]).sort(), ['id', 'job', 'op', 'owner', 'step', 'tasks', 'v'], 'the tasks only attach');
  t.deepEqual(reqs[1].tasks, s.tasks.map((x) => ({ task: x.task + 4, pid: x.pid })), 'each task by its global id and its own pid');
  t.like(reqs[2], { job: '5', step: '2', force: true, reapJob: true });

  // Where Slurm does not give the local task count, each task is placed alone.
  const alone = await recorder();
  t.teardown(alone.close);
  const a = await step([`socket=${alone.sock}`, 'devices=no'], { DRV_NTASKS: '2', DRV_NO_LOCAL_COUNT: '1' });
  t.deepEqual(a.ran.map((x) => x.task).sort(), [0, 1]);
  t.deepEqual(alone.reqs().slice(1, 3).map((q) => q.tasks), a.tasks.map((x) => [{ task: x.task, pid: x.pid }]));
});

cTest("post_fork: a step's tasks the agent refuses are all killed before exec; an agent that dropped the connection is reconnected", async (t) => {
  const r = await recorder((req, n, s) => {
    if (req.op === 'task.place' && req.tasks) {
      s.write(JSON.stringify({ id: req.id, ok: false, error: { code: 'EBUSY', message: 'no' } }) + '\n');
      return true;
    }
  });
  t.teardown(r.close);
  const s = await step([`socket=${r.sock}`, 'devices=no'], { DRV_NTASKS: '3' });
  t.deepEqual(s.ran, []);
  t.deepEqual(s.tasks.map((x) => x.signal), [9, 9, 9], 'every task killed (SIGKILL) before exec');
  for (const i of [0, 1, 2]) t.regex(s.errors[i], new RegExp(`^cgstep: placing task ${i} \\(pid ${s.tasks[i].pid}\\) for job 1 step 0 failed \\(cgstepd at .*: EBUSY: no\\); task killed before exec \\(failure=closed\\)$`));
  t.is(r.reqs().filter((q) => q.op === 'task.place' && q.tasks).length, 1, 'one request for the three');

  // failure=open: the tasks run (unplaced) and the message says so.
  const open = await step([`socket=${r.sock}`, 'devices=no', 'failure=open'], { DRV_NTASKS: '2' });
  t.deepEqual(open.ran.map((x) => x.task).sort(), [0, 1]);
  t.regex(open.errors[0], /placing task 0 .*failure=open: continuing without cgroup confinement/);
  t.regex(open.errors[1], /placing task 1 .*failure=open: continuing without cgroup confinement/);

  // The agent restarted between the step and its tasks: the kept connection is dropped, the task placed on a new one.
  const d = await recorder((req, n, s) => {
    if (req.op === 'task.place' && req.leaf === 'slurm') {
      s.write(JSON.stringify({ id: req.id, ok: true, result: {} }) + '\n');
      s.end();
      return true;
    }
  });
  t.teardown(d.close);
  const again = await step([`socket=${d.sock}`, 'devices=no'], {});
  t.deepEqual(again.ran.map((x) => x.task), [0], JSON.stringify(again));
  t.deepEqual(again.errors, []);
  // The task's request, unanswered on the dropped connection, is sent again on a new one (task.place is idempotent).
  t.deepEqual(d.seen.map((x) => [x.req.op, x.conn]), [['task.place', 0], ['task.place', 0], ['task.place', 1], ['destroy', 1]]);
});

cTest("the step's placement is answered while slurmstepd forks: read before the tasks are placed; refused or unanswered, the tasks are killed before exec with one message and none is placed", async (t) => {
  // Refused: the agent's reply is read at the last post_fork.
  const no = await recorder((req, n, s) => {
    if (req.op === 'task.place' && req.leaf === 'slurm') {
      s.write(JSON.stringify({ id: req.id, ok: false, error: { code: 'EPERM', message: 'not yours' } }) + '\n');
      return true;
    }
  });
  t.teardown(no.close);
  const s = await step([`socket=${no.sock}`, 'devices=no'], { DRV_NTASKS: '2' });
  t.deepEqual(s.ran, []);
  t.deepEqual(s.tasks.map((x) => x.signal), [9, 9]);
  t.deepEqual(s.errors, ["cgstep: creating the step's cgroup for job 1 step 0 failed (cgstepd at " + no.sock + ': EPERM: not yours); tasks killed before exec (failure=closed)']);
  t.deepEqual(no.reqs().filter((q) => q.tasks), [], 'no task placed');
  const open = await step([`socket=${no.sock}`, 'devices=no', 'failure=open'], { DRV_NTASKS: '2' });
  t.deepEqual(open.ran.map((x) => x.task).sort(), [0, 1]);
  t.regex(open.errors[0], /creating the step's cgroup .*EPERM: not yours\); failure=open: continuing without cgroup confinement$/);

  // Dropped before the reply (an agent restart): sent again on a new connection, then the tasks.
  const drop = await recorder((req, n, s) => {
    if (req.op === 'task.place' && req.leaf === 'slurm' && n === 0) {
      s.destroy();
      return true;
    }
  });
  t.teardown(drop.close);
  const again = await step([`socket=${drop.sock}`, 'devices=no'], {});
  t.deepEqual(again.errors, []);
  t.deepEqual(again.ran.map((x) => x.task), [0]);
  t.deepEqual(drop.seen.map((x) => [x.req.op, x.req.leaf ?? (x.req.tasks ? 'tasks' : ''), x.conn]), [['task.place', 'slurm', 0], ['task.place', 'slurm', 1], ['task.place', 'tasks', 1], ['destroy', '', 1]]);

  // No reply at all within timeout_ms: the tasks are killed, and nothing is destroyed at exit (the epilog does it).
  const mute = await recorder((req) => req.op === 'task.place' && req.leaf === 'slurm');
  t.teardown(mute.close);
  const t0 = Date.now();
  const stalled = await step([`socket=${mute.sock}`, 'devices=no', 'timeout_ms=300'], {});
  t.true(Date.now() - t0 >= 300);
  t.deepEqual(stalled.ran, []);
  t.regex(stalled.errors[0], /creating the step's cgroup for job 1 step 0 failed \(cgstepd at .*: no reply within 300 ms\); tasks killed before exec/);
  t.deepEqual(mute.reqs().map((q) => q.op), ['task.place'], 'no destroy after an unanswered placement');
});

cTest('step: a step id Slurm never gives, GPUs that are not indices, and an unknown option fail each task before exec with a message; nothing is sent', async (t) => {
  const r = await recorder();
  t.teardown(r.close);
  let s = await step([`socket=${r.sock}`], { DRV_STEP: String(0xfffffffd) });
  t.deepEqual(s.ran, []);
  t.is(s.exited[0].exited, 1, 'the task ends itself (fail closed even for an optional plugin)');
  t.regex(s.exited[0].errors[0], /step id 0xfffffffd has no name/);
  s = await step([`socket=${r.sock}`], { SLURM_STEP_GPUS: 'GPU-5e1f,0', DRV_GRES_GPU: gresGpu });
  t.deepEqual(s.ran, []);
  t.regex(s.exited[0].errors[0], /reading the step's GPUs for job 1 step 0 failed .*SLURM_STEP_GPUS=GPU-5e1f,0: "GPU-5e1f" is not a GPU index/);
  s = await step([`socket=${r.sock}`, 'failure=open'], { SLURM_STEP_GPUS: 'GPU-5e1f', DRV_GRES_GPU: gresGpu });
  t.is(s.ran.length, 1, 'failure=open lets it run');
  s = await step([`socket=${r.sock}`, 'timeout_ms=0'], {});
  t.deepEqual(s.ran, []);
  t.is(s.exited[0].exited, 1);
  t.regex(s.errors[0], /timeout_ms= needs 1..3600000, got "0"/);
  t.deepEqual(s.exited[0].errors, ['cgstep: timeout_ms= needs 1..3600000, got "0"', 'cgstep: bad options in plugstack.conf; task not started'], 'the option error in the job stderr too');
  t.deepEqual(r.reqs(), []);
  // NoDevFiles (a gres without device files) and empty values are no GPUs.
  s = await step([path.join(dir, 'nothing.sock').replace(/^/, 'socket=')], { SLURM_STEP_GPUS: 'NoDevFiles', DRV_GRES_GPU: gresGpu });
  t.regex(s.exited[0].errors[0], /placing the task .*cannot connect/);
});

cTest('cpus=no leaves the core lists out, cpus=yes sends them, and memory goes from MB to bytes', async (t) => {
  const r = await recorder();
  t.teardown(r.close);
  const env = { DRV_JOB: '5', DRV_STEP: '2', DRV_TASK: '1', DRV_JOB_MEM: '1024', DRV_STEP_MEM: '512', DRV_JOB_CORES: '0-3,8', DRV_STEP_CORES: '2' };
  await step([`socket=${r.sock}`, 'devices=no', 'cpus=no'], env);
  t.deepEqual([r.reqs()[0].op, r.reqs()[0].jobLimits, r.reqs()[0].stepLimits], ['task.place', { memory: 1024 * 2 ** 20 }, { memory: 512 * 2 ** 20 }]);
  r.seen.length = 0;
  await step([`socket=${r.sock}`, 'devices=no', 'cpus=yes'], env);
  t.deepEqual(r.reqs()[0].jobLimits, { cpus: '0-3,8', memory: 1024 * 2 ** 20 });
  t.deepEqual(r.reqs()[0].stepLimits, { cpus: '2', memory: 512 * 2 ** 20 });
  r.seen.length = 0;
  // A core list that is not a list is left out, never sent.
  await step([`socket=${r.sock}`, 'devices=no', 'cpus=yes'], { ...env, DRV_JOB_CORES: '0-3,"x"', DRV_JOB_MEM: '0' });
  t.is(r.reqs()[0].jobLimits, undefined);
});

cTest("the step's GPUs: only the variable Slurm sets from the credential (SLURM_STEP_GPUS; SLURM_JOB_GPUS in the batch step), only with gres/gpu loaded, none in the extern step", async (t) => {
  const r = await recorder();
  t.teardown(r.close);
  const forged = { SLURM_STEP_GPUS: '0,1', SLURM_JOB_GPUS: '2', CUDA_VISIBLE_DEVICES: '3' };
  const cases: [string, Record<string, string>, string[]][] = [
    ['0', { ...forged }, []],
    ['0', { ...forged, DRV_GRES_GPU: gresGpu }, ['gpu:0', 'gpu:1']],
    ['0', { CUDA_VISIBLE_DEVICES: '3', DRV_GRES_GPU: gresGpu }, []],
    [String(0xfffffffb), { ...forged, DRV_GRES_GPU: gresGpu }, ['gpu:2']],
    [String(0xfffffffa), { ...forged, DRV_GRES_GPU: gresGpu }, ['gpu:2']],
    [String(0xfffffffc), { ...forged, DRV_GRES_GPU: gresGpu }, []],
  ];
  for (const [stepId, env] of cases) await step([`socket=${r.sock}`], { DRV_STEP: stepId, ...env });
  const placed = r.reqs().filter((q) => q.op === 'task.place' && q.leaf === 'slurm');
  t.deepEqual(
    placed.map((q) => [q.step, q.jobDevices.gres, q.stepDevices.gres]),
    cases.map(([, , g], i) => [['0', '0', '0', 'batch', 'interactive', 'extern'][i], g, g]),
  );
  t.false(/ slurm_spank_job_prolog$/m.test(spawnSync('nm', [driver], { encoding: 'utf8' }).stdout), 'no job_prolog: slurmd execs no slurmstepd before a job');
});

cTest("epilog: destroy of the job, forced; never fails", async (t) => {
  const r = await recorder();
  t.teardown(r.close);
  t.deepEqual(await epilog([`socket=${r.sock}`], { DRV_JOB: '7' }), { rc: 0, errors: [] });
  t.deepEqual(r.reqs().map(({ op, job, step, force }) => ({ op, job, step, force })), [{ op: 'destroy', job: '7', step: undefined, force: true }]);
  const down = await epilog([`socket=${path.join(dir, 'nothing.sock')}`], { DRV_JOB: '11' });
  t.is(down.rc, 0, 'never fails the epilog (that would drain the node)');
  t.regex(down.errors[0], /removing job 11 at its epilog failed \(cgstepd at .*: cannot connect/);
});

cTest('reply reader: devicesIgnored of a placement (in result.step or result.job) is found', (t) => {
  const [a, b, c] = parseLines([
    JSON.stringify({ id: 1, ok: true, result: { job: { created: false }, step: { created: true, devicesIgnored: 'not enforced' }, leaf: '/x' } }),
    JSON.stringify({ id: 2, ok: true, result: { job: { devicesIgnored: 'j' }, step: { devicesIgnored: 's' } } }),
    JSON.stringify({ id: 3, ok: true, result: { other: { devicesIgnored: 'deeper elsewhere' } } }),
  ]);
  t.is(a.devicesIgnored, 'not enforced');
  t.is(b.devicesIgnored, 'j');
  t.is(c.devicesIgnored, '');
});

cTest('exit: a slurmstepd that cannot leave its step cgroup does not destroy the step under itself (the job epilog does)', async (t) => {
  const base = makeTestRoot('spank-leave');
  const leaf = path.join(base, 'node1_slurmstepd.scope', 'job_9', 'step_0', 'slurm');
  fs.mkdirSync(leaf, { recursive: true });
  const r = await recorder();
  try {
    // A shell moves itself into the step's slurm/ leaf (no system/ beside the jobs), then becomes the "slurmstepd".
    const s = await step([`socket=${r.sock}`, 'devices=no'], { DRV_JOB: '9', DRV_STEP: '0', DRV_NTASKS: '1' }, ['sh', '-c', `echo $$ > ${leaf}/cgroup.procs && exec "$@"`, 'sh']);
    t.is(s.exit, -1);
    t.regex(s.errors[0], /could not move slurmstepd \(pid \d+\) out of its step's cgroup \(to .*node1_slurmstepd.scope\/system: No such file or directory\)/);
    t.is(s.errors[1], 'cgstep: job 9 step 0 left for the job epilog to remove');
    t.false(r.reqs().some((q) => q.op === 'destroy'), 'no destroy sent');
  } finally {
    await r.close();
    await removeTestRoot(base);
  }
});

// Against a real agent: what the callbacks make, and what a forged step environment gets.
let root: string;
let agent: RunningAgent;
let gpuDir: string;
let gpus: string[] = [];

async function realAgent(): Promise<RunningAgent> {
  if (!root) {
    root = makeTestRoot('spank-client');
    gpuDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-spank-gpus-'));
    gpus = [0, 1, 2, 3].map((i) => path.join(gpuDir, `nvidia${i}`));
    for (const [i, g] of gpus.entries()) spawnSync('mknod', ['-m', '0666', g, 'c', '195', String(i)]);
    fs.writeFileSync(path.join(gpuDir, 'gres.conf'), gpus.map((g) => `NodeName=node1 Name=gpu File=${g}\n`).join(''));
  }
  if (!agent) {
    agent = await startAgent({ root, args: ['--ignore-systemd', '--node-name', 'node1', '--gres', path.join(gpuDir, 'gres.conf'), '--ignore-missing-controllers'] });
  }
  return agent;
}

test.after.always(async () => {
  await agent?.stop();
  if (root) await removeTestRoot(root);
  if (gpuDir) fs.rmSync(gpuDir, { recursive: true, force: true });
});

async function agentStatus(a: RunningAgent) {
  const c = await a.client();
  try {
    return (await c.request('status', {})) as { scope: string; devices: { supported: boolean; reason?: string } };
  } finally {
    c.close();
  }
}

cTest('against a real cgstepd: the step daemon in slurm/, each task in its leaf before it runs (all placed in one request), limits, the step and job removed at exit', async (t) => {
  const a = await realAgent();
  const status = await agentStatus(a);
  const env = { DRV_JOB: '77', DRV_STEP: String(0xfffffffb), DRV_TASK: '3', DRV_NTASKS: '2', DRV_JOB_MEM: '512', DRV_STEP_MEM: '256', DRV_JOB_CORES: '0-1', DRV_STEP_CORES: '1' };
  const show = `printf '{"self":"%s","parent":"%s"}\\n' "$(grep ^0:: /proc/self/cgroup | cut -c4-)" "$(grep ^0:: /proc/$PPID/cgroup | cut -c4-)"`;
  const s = await step([`socket=${a.socket}`, 'devices=try', 'cpus=yes'], { ...env, DRV_EXEC: show });
  t.deepEqual(s.errors, []);
  t.deepEqual(s.tasks.map((x) => x.exit), [0, 0]);
  const step0 = `/${path.relative(MOUNT, status.scope)}/job_77/step_batch`;
  // When each task ran, it was in its own leaf and its parent (the "slurmstepd") in slurm/.
  t.deepEqual(s.other.map((o) => o.self).sort(), [`${step0}/user/task_3`, `${step0}/user/task_4`]);
  t.deepEqual(s.other.map((o) => o.parent), [`${step0}/slurm`, `${step0}/slurm`]);
  // One line for the step daemon's placement, one for both tasks'.
  await until(() => a.logLines().filter((l) => l.msg === 'process placed' && l.job === '77').length === 2, 5000, 'the placement log lines');
  t.deepEqual(a.logLines().find((l) => l.msg === 'process placed' && l.job === '77' && l.movedPids)?.movedPids, s.tasks.map((x) => x.pid));
  t.false(fs.existsSync(path.join(status.scope, 'job_77')), 'the step and its job removed at exit');
});

cTest('the client cost, request by request, against a real cgstepd (logged, not asserted)', async (t) => {
  const a = await realAgent();
  const pid = spawn('sleep', ['30'], { stdio: 'ignore' });
  const pid2 = spawn('sleep', ['30'], { stdio: 'ignore' });
  try {
    const bodies = [
      `"op":"task.place","job":"88","step":"0","pid":${pid2.pid},"leaf":"slurm","owner":0,"jobLimits":{"cpus":"0-1","memory":536870912},"stepLimits":{"cpus":"1","memory":268435456},"jobDevices":{"gres":[]},"stepDevices":{"gres":[]}`,
      `"op":"task.place","job":"88","step":"0","pid":${pid.pid},"task":0,"owner":0`,
      '"op":"destroy","job":"88","step":"0","force":true,"reapJob":true',
    ];
    const r = await call(a.socket, 5000, bodies);
    t.deepEqual(r.calls.map((c) => c.err), ['', '', '']);
    t.log(`task.place (job and step) ${r.calls[0].us} us, task.place (task) ${r.calls[1].us} us, destroy (kills both) ${r.calls[2].us} us; process wall ${r.wallMs.toFixed(1)} ms`);
  } finally {
    pid.kill('SIGKILL');
    pid2.kill('SIGKILL');
  }
});

/** probe.py run as each task: its cgroup and what opening each fake GPU gives. */
const probeCmd = () => [PYTHON, path.join(here, 'probe.py'), ...gpus].join(' ');

cTest("the kernel's word: a forged GPU variable without gres/gpu gives no GPU; Slurm's list opens exactly its GPUs; a later step's GPUs widen the job", async (t) => {
  const a = await realAgent();
  const status = await agentStatus(a);
  if (!status.devices.supported) return t.fail(`cgstepd cannot confine devices here: ${status.devices.reason}`);
  const sock = `socket=${a.socket}`;
  const opened = (s: StepOut) => s.other.map((p) => gpus.map((g) => p.open[g]));
  // Job 61: no gres/gpu in this "slurmstepd": the step's variables are the user's, and name no GPU.
  for (const forged of [{ SLURM_STEP_GPUS: '0,1,2,3' }, { CUDA_VISIBLE_DEVICES: '0,1,2,3' }] as Record<string, string>[]) {
    const s = await step([sock], { DRV_JOB: '61', DRV_STEP: '0', ...forged, DRV_EXEC: probeCmd() });
    t.deepEqual(opened(s), [['EPERM', 'EPERM', 'EPERM', 'EPERM']], JSON.stringify(s));
  }
  const c = await a.client();
  const holder = spawn('sleep', ['30'], { stdio: 'ignore' });
  try {
    // Job 62: Slurm's list (gres/gpu loaded) names GPU 1: it opens (ENXIO: no driver), not the others.
    const one = await step([sock], { DRV_JOB: '62', DRV_STEP: '0', SLURM_STEP_GPUS: '1', DRV_GRES_GPU: gresGpu, DRV_EXEC: probeCmd() });
    t.deepEqual(opened(one), [['EPERM', 'ENXIO', 'EPERM', 'EPERM']], JSON.stringify(one));
    // A second step while another runs (the job stays): Slurm gave it GPUs 1 and 2, and the job's allocation grows to both.
    await c.request('task.place', { job: '62', step: '9', pid: holder.pid!, task: 0, jobDevices: { gres: ['gpu:1'] } });
    const more = await step([sock], { DRV_JOB: '62', DRV_STEP: '1', SLURM_STEP_GPUS: '1,2', DRV_GRES_GPU: gresGpu, DRV_EXEC: probeCmd() });
    t.deepEqual(opened(more), [['EPERM', 'ENXIO', 'ENXIO', 'EPERM']], JSON.stringify(more));
  } finally {
    holder.kill('SIGKILL');
    for (const job of ['61', '62']) await c.request('destroy', { job, force: true }).catch(() => undefined);
    c.close();
  }
  t.false(fs.existsSync(path.join(status.scope, 'job_61')));
  t.false(fs.existsSync(path.join(status.scope, 'job_62')));
});

cTest("the job's owner is the Slurm job's uid: the step daemon's request makes the job owned by S_JOB_UID (trusted.cgstep.owner), its steps run in it", async (t) => {
  const a = await realAgent();
  const status = await agentStatus(a);
  const jobDir = path.join(status.scope, 'job_63');
  const owner = `${PYTHON} -c 'import json, os; print(json.dumps({"owner": os.getxattr("${jobDir}", "trusted.cgstep.owner").decode()}))'`;
  const s = await step([`socket=${a.socket}`, 'devices=try'], { DRV_JOB: '63', DRV_STEP: '0', DRV_UID: '4242', DRV_EXEC: owner });
  t.deepEqual(s.errors, []);
  t.deepEqual(s.other, [{ owner: '4242' }], JSON.stringify(s));
  t.false(fs.existsSync(jobDir), 'removed with its last step');
});
