/**
 * The SPANK plugin's own C code outside Slurm (test/slurm/spank-driver.c
 * includes native/spank/cgstep_spank.c): its reply reader against JSON.parse
 * (fast-check), its socket client against servers that split, batch, delay,
 * mislabel, flood or drop replies, and its task/exit callbacks against a real
 * cgstepd. Needs only gcc and Slurm's headers.
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

test.before(() => {
  if (!slurmOk) return;
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-spank-driver-'));
  driver = path.join(dir, 'driver');
  const r = spawnSync(process.env.CC ?? 'cc', ['-O1', '-g', '-Wall', '-Wextra', '-Werror', '-Wno-unused-parameter', '-std=gnu11', `-I${path.join(REPO, 'native/spank')}`, '-o', driver, path.join(here, 'spank-driver.c'), ...['client.c', 'json.c'].map((f) => path.join(REPO, 'native/spank', f))], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`building the driver failed:\n${r.stderr}`);
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

cTest('client: a server that is not root (nor agent_uid=) is refused before any request; the task fails closed saying so', async (t) => {
  const f = await foreignServer();
  t.teardown(f.stop);
  const r = await call(f.sock, 2000, [HELLO]);
  t.is(r.open, -1);
  t.regex(r.err!, /^refusing the server: it runs as uid 65534 \(pid \d+\), not as root \(agent_uid= unset\); not cgstepd, or agent_uid= in plugstack.conf must name its uid$/);
  const task = await callbackAsync('task', [`socket=${f.sock}`], {});
  t.is(task.exited, 1);
  t.regex(task.errors[0], new RegExp(`^cgstep: placing the task for job 1 step 0 failed \\(cgstepd at ${f.sock.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: refusing the server: it runs as uid 65534 .*\\); task not started \\(failure=closed\\)$`));
  t.deepEqual(f.lines(), [], 'nothing was sent to it');
  // Named as the agent's uid, it is accepted.
  const ok = await callbackAsync('task', [`socket=${f.sock}`, 'agent_uid=65534', 'devices=no'], {});
  t.deepEqual(ok, { rc: 0, errors: [] });
  t.true(f.lines().length > 0);
  t.regex(callback('task', ['agent_uid=x'], {}).errors[0], /agent_uid= needs a numeric uid, got "x"/);
});

// The callbacks against a real agent, run from a shell so that getppid() (the
// "step daemon") is that shell and not this test worker.
let root: string;
let agent: RunningAgent;

async function realAgent(): Promise<RunningAgent> {
  if (!agent) {
    root = makeTestRoot('spank-client');
    agent = await startAgent({ root, args: ['--ignore-systemd', '--node-name', 'node1', '--ignore-missing-controllers'] });
  }
  return agent;
}

test.after.always(async () => {
  await agent?.stop();
  if (root) await removeTestRoot(root);
});

/** The same, without blocking this process (for servers living in it). */
function callbackAsync(kind: 'task' | 'exit', args: string[], env: Record<string, string>): Promise<{ rc: number; exited?: number; errors: string[] }> {
  return new Promise((resolve, reject) => {
    const p = spawn('sh', ['-c', `"$@"; true`, 'sh', driver, kind, ...args], { env: { PATH: process.env.PATH!, ...env }, stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.on('error', reject);
    p.on('close', () => resolve(JSON.parse(out.trim().split('\n').pop()!)));
  });
}

function callback(kind: 'task' | 'exit', args: string[], env: Record<string, string>) {
  const r = spawnSync('sh', ['-c', `"$@"; true`, 'sh', driver, kind, ...args], { encoding: 'utf8', env: { PATH: process.env.PATH!, ...env } });
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as { rc: number; exited?: number; errors: string[] };
}

cTest('task_init_privileged and exit against a real cgstepd: the task leaf, the step daemon, limits, the step removed with its job', async (t) => {
  const a = await realAgent();
  const status = (await (await a.client()).request('status', {})) as { scope: string };
  const env = { DRV_JOB: '77', DRV_STEP: String(0xfffffffb), DRV_TASK: '3', DRV_LTASK: '0', DRV_JOB_MEM: '512', DRV_STEP_MEM: '256', DRV_JOB_CORES: '0-1', DRV_STEP_CORES: '1' };
  const r = callback('task', [`socket=${a.socket}`, 'devices=try'], env);
  t.deepEqual(r, { rc: 0, errors: [] });
  const step = path.join(status.scope, 'job_77', 'step_batch');
  t.true(fs.existsSync(path.join(step, 'user', 'task_3')));
  t.true(fs.existsSync(path.join(step, 'slurm')));
  // The agent's log reaches us through a pipe: wait for the lines.
  await until(() => a.logLines().filter((l) => l.msg === 'process attached' && l.job === '77').length === 2, 5000, 'the attach log lines');
  const logs = a.logLines();
  t.truthy(logs.find((l) => l.msg === 'job created' && l.job === '77'));
  const created = logs.find((l) => l.msg === 'step created' && l.job === '77' && l.step === 'batch');
  t.truthy(created);
  t.true(logs.filter((l) => l.msg === 'process attached' && l.job === '77').length === 2, 'the task and the step daemon');
  const e = callback('exit', [`socket=${a.socket}`], env);
  t.deepEqual(e, { rc: 0, errors: [] });
  t.false(fs.existsSync(path.join(status.scope, 'job_77')));
  t.true(MOUNT.length > 0);
});

cTest('task_init_privileged: a step id Slurm never gives, GPUs that are not indices, and an unknown option fail with a message', (t) => {
  const sock = path.join(dir, 'unused.sock');
  let r = callback('task', [`socket=${sock}`], { DRV_STEP: String(0xfffffffd) });
  t.is(r.rc, -1);
  t.is(r.exited, 1, 'the task ends itself (fail closed even for an optional plugin)');
  t.regex(r.errors[0], /step id 0xfffffffd has no name/);
  r = callback('task', [`socket=${sock}`], { CUDA_VISIBLE_DEVICES: 'GPU-5e1f,0' });
  t.is(r.rc, -1);
  t.regex(r.errors[0], /reading the step's GPUs for job 1 step 0 failed .*CUDA_VISIBLE_DEVICES=GPU-5e1f,0: "GPU-5e1f" is not a GPU index/);
  r = callback('task', [`socket=${sock}`, 'failure=open'], { CUDA_VISIBLE_DEVICES: 'GPU-5e1f' });
  t.is(r.rc, 0, 'failure=open lets it run');
  r = callback('task', [`socket=${sock}`, 'timeout_ms=0'], {});
  t.is(r.rc, -1);
  t.is(r.exited, 1);
  t.regex(r.errors[0], /timeout_ms= needs 1..3600000, got "0"/);
  t.is(r.errors[1], 'cgstep: bad options in plugstack.conf; task not started');
  // NoDevFiles (a gres without device files) and empty values are no GPUs.
  r = callback('task', [`socket=${sock}`], { CUDA_VISIBLE_DEVICES: 'NoDevFiles' });
  t.regex(r.errors[0], /placing the task .*cannot connect/);
});

cTest('the client cost, request by request, against a real cgstepd (logged, not asserted)', async (t) => {
  const a = await realAgent();
  const pid = spawn('sleep', ['30'], { stdio: 'ignore' });
  try {
    const bodies = [
      '"op":"job.create","job":"88","limits":{"cpus":"0-1","memory":536870912}',
      '"op":"step.create","job":"88","step":"0","limits":{"cpus":"1","memory":268435456},"devices":{"gres":[]}',
      `"op":"attach","job":"88","step":"0","pid":${pid.pid},"task":0`,
      '"op":"destroy","job":"88","step":"0","force":true,"reapJob":true',
    ];
    const r = await call(a.socket, 5000, bodies);
    t.deepEqual(r.calls.map((c) => c.err), ['', '', '', '']);
    t.log(`job.create ${r.calls[0].us} us, step.create ${r.calls[1].us} us, attach ${r.calls[2].us} us, destroy (kills the task) ${r.calls[3].us} us; process wall ${r.wallMs.toFixed(1)} ms`);
  } finally {
    pid.kill('SIGKILL');
  }
});

cTest('cpus=no leaves the core lists out, cpus=yes sends them, and memory goes from MB to bytes', async (t) => {
  const seen: any[] = [];
  await withServer(
    (req, s) => {
      seen.push(req);
      s.write(JSON.stringify({ id: req.id, ok: true, result: {} }) + '\n');
    },
    async (sock) => {
      const env = { DRV_JOB: '5', DRV_STEP: '2', DRV_TASK: '1', DRV_LTASK: '1', DRV_JOB_MEM: '1024', DRV_STEP_MEM: '512', DRV_JOB_CORES: '0-3,8', DRV_STEP_CORES: '2' };
      t.deepEqual(await callbackAsync('task', [`socket=${sock}`, 'devices=no', 'cpus=no'], env), { rc: 0, errors: [] });
      t.deepEqual(seen.map((q) => [q.op, q.limits]), [
        ['job.create', { memory: 1024 * 2 ** 20 }],
        ['step.create', { memory: 512 * 2 ** 20 }],
        ['attach', undefined],
      ]);
      t.like(seen[2], { job: '5', step: '2', task: 1 });
      seen.length = 0;
      t.deepEqual(await callbackAsync('task', [`socket=${sock}`, 'devices=no', 'cpus=yes'], env), { rc: 0, errors: [] });
      t.deepEqual(seen[0].limits, { cpus: '0-3,8', memory: 1024 * 2 ** 20 });
      t.deepEqual(seen[1].limits, { cpus: '2', memory: 512 * 2 ** 20 });
      seen.length = 0;
      // A core list that is not a list is left out, never sent.
      t.deepEqual(await callbackAsync('task', [`socket=${sock}`, 'devices=no', 'cpus=yes'], { ...env, DRV_JOB_CORES: '0-3,"x"', DRV_JOB_MEM: '0' }), { rc: 0, errors: [] });
      t.is(seen[0].limits, undefined);
    },
  );
});

cTest('exit: a slurmstepd that cannot leave its step cgroup does not destroy the step under itself (the job epilog does)', async (t) => {
  const base = makeTestRoot('spank-leave');
  const leaf = path.join(base, 'node1_slurmstepd.scope', 'job_9', 'step_0', 'slurm');
  fs.mkdirSync(leaf, { recursive: true });
  const seen: any[] = [];
  try {
    await withServer(
      (req, s) => {
        seen.push(req);
        s.write(JSON.stringify({ id: req.id, ok: true, result: {} }) + '\n');
      },
      async (sock) => {
        // A shell moves itself into the step's slurm/ leaf (no system/ beside the jobs), then runs the exit callback.
        const r = await new Promise<{ rc: number; errors: string[] }>((resolve, reject) => {
          const p = spawn('sh', ['-c', `echo $$ > ${leaf}/cgroup.procs && exec "$@"`, 'sh', driver, 'exit', `socket=${sock}`], {
            env: { PATH: process.env.PATH!, DRV_JOB: '9', DRV_STEP: '0' },
            stdio: ['ignore', 'pipe', 'inherit'],
          });
          let out = '';
          p.stdout.on('data', (d) => (out += d));
          p.on('error', reject);
          p.on('close', () => resolve(JSON.parse(out.trim().split('\n').pop()!)));
        });
        t.is(r.rc, -1);
        t.regex(r.errors[0], /could not move slurmstepd \(pid \d+\) out of its step's cgroup \(to .*node1_slurmstepd.scope\/system: No such file or directory\)/);
        t.is(r.errors[1], 'cgstep: job 9 step 0 left for the job epilog to remove');
        t.deepEqual(seen, [], 'no destroy sent');
      },
    );
  } finally {
    await removeTestRoot(base);
  }
});
