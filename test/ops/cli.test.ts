/**
 * The command lines as an admin meets them: --version, usage errors (one line,
 * the --help to read, exit 2), agent refusals (exit 1, `cgstep: CODE: message`),
 * yes/no variables in every spelling, empty variables, sizes in MiB, and the
 * agent's fatal start-up errors (one stderr line, the JSON log line, exit 2,
 * nothing made).
 */
import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { makeTestRoot, removeTestRoot } from '../helpers/cgroup.js';
import { CGSTEP, CGSTEPD, startAgent, waitFor } from '../helpers/agent.js';

const node = (args: string[], env: Record<string, string> = {}) => {
  const r = spawnSync(process.execPath, args, { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 60000 });
  return { code: r.status, stdout: String(r.stdout), stderr: String(r.stderr) };
};

test('--version on both programs prints the package version', (t) => {
  const version = JSON.parse(fs.readFileSync(new URL('../../package.json', import.meta.url), 'utf8')).version;
  for (const bin of [CGSTEP, CGSTEPD]) {
    const r = node([bin, '--version']);
    t.is(r.code, 0);
    t.is(r.stdout.trim(), version);
  }
});

test('cgstep: usage errors are one line with the --help to read and exit 2', async (t) => {
  const root = makeTestRoot('cli');
  t.teardown(() => removeTestRoot(root));
  const a = await startAgent({ root, args: ['--ignore-systemd'] });
  t.teardown(() => a.stop());
  const usage = (args: string[], re: RegExp, cmd: string) => {
    const r = a.cli(args);
    t.is(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    t.is(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
    t.regex(r.stderr, re);
    t.true(r.stderr.includes(`(see ${cmd} --help)`), r.stderr);
    t.is(r.stdout, '');
  };
  usage(['run', '12', '0', 'true'], /put -- before the command: cgstep run 12 0 -- true/, 'cgstep run');
  usage(['run', '12', '0', '--'], /missing the command after --/, 'cgstep run');
  usage(['run', '--bogus', '12', '0', '--', 'true'], /unknown option '--bogus'/, 'cgstep run');
  usage(['attach', '1', '0'], /missing required argument 'pid'/, 'cgstep attach');
  usage(['attach', '1', '0', '5', '--task', '1', '--slurm'], /only one of --task, --special, --slurm/, 'cgstep attach');
  usage(['--bogus', 'status'], /unknown option '--bogus'/, 'cgstep');
  usage(['job', 'create', '1', '--memory', 'lots'], /--memory: expected a size/, 'cgstep job create');
  usage(['job', 'create', '1', '--device-policy', 'ajar'], /--device-policy must be open or closed/, 'cgstep');
  // Ids the protocol's schema refuses are the caller's typing too (checked by the agent, the one schema).
  usage(['job', 'create', 'abc'], /^cgstep job create: job: job id must be/, 'cgstep job create');
  usage(['step', 'create', '1', 'Batch'], /^cgstep step create: step: /, 'cgstep step create');
});

test('cgstep: refusals by the agent exit 1 with CODE: message; destroy of nothing says so; EBUSY names --force; --wait fails once', async (t) => {
  const root = makeTestRoot('cli2');
  t.teardown(() => removeTestRoot(root));
  const a = await startAgent({ root, args: ['--ignore-systemd'] });
  t.teardown(() => a.stop());
  // Refusals by the agent, EINVAL included: exit 1 and the code.
  const sig = a.cli(['signal', '1', '0', 'BOGUS']);
  t.is(sig.code, 1, sig.stderr);
  t.regex(sig.stderr, /^cgstep: EINVAL: /);
  const noJob = a.cli(['stats', '404']);
  t.is(noJob.code, 1);
  t.regex(noJob.stderr, /^cgstep: ENOENT: /);
  // destroy of nothing says so (exit 0) and never claims a destroy.
  const d = a.cli(['destroy', '999']);
  t.is(d.code, 0);
  t.is(d.stdout.trim(), 'job 999 did not exist: nothing to destroy');
  // EBUSY names the real flag.
  t.is(a.cli(['run', '31', '0', '--', 'true']).code, 0);
  // Flags for a step that exists are not applied, and the client says so.
  const again = a.cli(['run', '31', '0', '--task', '1', '--device-deny', 'c 1:3 rwm', '--', 'true']);
  t.is(again.code, 0, again.stderr);
  t.regex(again.stderr, /^cgstep: note: step 31\.0 exists: its limits and devices are used as they are/);
  t.is(a.cli(['run', '31', '0', '--task', '1', '--', 'true']).stderr, '', 'no note without flags');
  const sleeper = a.cli(['run', '31', '0', '--', 'sh', '-c', 'sleep 60 </dev/null >/dev/null 2>&1 & echo $!']);
  t.is(sleeper.code, 0);
  t.teardown(() => { try { process.kill(Number(sleeper.stdout.trim()), 'SIGKILL'); } catch { /* gone */ } });
  const busy = a.cli(['destroy', '31']);
  t.is(busy.code, 1);
  t.regex(busy.stderr, /^cgstep: EBUSY: .*cgstep destroy --force/);
  t.regex(a.cli(['destroy', '31', '--force']).stdout, /^destroyed job 31\b/);
  // --wait failure is printed once; a missing socket says what to check.
  const gone = a.cli(['--socket', '/nonexistent/x.sock', '--wait', '200', 'status']);
  t.is(gone.code, 1);
  t.is(gone.stderr.trim().split('\n').length, 1, gone.stderr);
  t.regex(gone.stderr, /^cgstep: EIO: gave up waiting 200 ms for the agent socket: cannot connect to cgstepd at \/nonexistent\/x.sock: ENOENT: no such socket\. Is cgstepd running\?/);
});

test('environment: yes/no variables in every spelling; an empty variable is unset; a bad word names the variable', async (t) => {
  const root = makeTestRoot('envbool');
  t.teardown(() => removeTestRoot(root));
  const a = await startAgent({ root, args: ['--ignore-systemd'] });
  t.teardown(() => a.stop());
  // Every spelling is in test/unit/cli.test.ts (EnvCommand itself); here the shipped binaries.
  const status = (v: string) => node([CGSTEP, 'status'], { CGSTEP_SOCKET: a.socket, CGSTEP_JSON: v });
  t.notThrows(() => JSON.parse(status('yes').stdout), 'CGSTEP_JSON=yes gives JSON');
  for (const v of ['0', '']) t.regex(status(v).stdout, /^cgstepd \S+ \(protocol/, `CGSTEP_JSON=${JSON.stringify(v)} gives text`);
  const bad = status('maybe');
  t.is(bad.code, 2);
  t.regex(bad.stderr, /CGSTEP_JSON=maybe: expected yes or no/);
  // An empty CGSTEP_SOCKET is as if unset: the default path, not a bad port.
  const empty = node([CGSTEP, 'status'], { CGSTEP_SOCKET: '' });
  t.notRegex(empty.stderr, /ERR_SOCKET_BAD_PORT/);
  t.regex(empty.stderr + empty.stdout, /\/run\/cgstepd\/cgstepd\.sock|^cgstepd /);
  // The agent: CGSTEP_IGNORE_SYSTEMD=no does not ignore systemd.
  await a.stop();
  const b = await startAgent({ root, env: { CGSTEP_IGNORE_SYSTEMD: 'no' } });
  t.teardown(() => b.stop());
  t.notRegex(b.log(), /IgnoreSystemd is set/);
  const st = JSON.parse(b.cli(['--json', 'status']).stdout);
  t.notRegex(JSON.stringify(st.backends), /IgnoreSystemd is set/);
});

test('cgstepd: a fatal configuration error is one stderr line (file:line, how to fix), the JSON log line, exit 2, and nothing made', async (t) => {
  const root = makeTestRoot('fatal');
  t.teardown(() => removeTestRoot(root));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-fatal-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const conf = path.join(dir, 'cgroup.conf');
  fs.writeFileSync(conf, '# ok\nConstrainCores=yes\nConstrainRAMSpace=maybe\n');
  const run = (args: string[]) => node([CGSTEPD, '--ignore-systemd', '--cgroup-root', root, '--socket', path.join(dir, 's.sock'), ...args]);
  const r = run(['--config', conf]);
  t.is(r.code, 2);
  t.deepEqual(r.stderr.trim().split('\n'), [`cgstepd: ${conf}:3: ConstrainRAMSpace=maybe: expected yes or no; correct that line (keys and values as in Slurm's cgroup.conf(5))`]);
  const logLine = JSON.parse(r.stdout.trim().split('\n').pop()!);
  t.is(logLine.level, 60);
  t.is(logLine.msg, `${conf}:3: ConstrainRAMSpace=maybe: expected yes or no`);
  const gres = path.join(dir, 'gres.conf');
  fs.writeFileSync(gres, 'Name=gpu File=/dev/nvidia[3-1]\n');
  const g = run(['--gres', gres]);
  t.is(g.code, 2);
  t.regex(g.stderr, new RegExp(`^cgstepd: .*${gres}:1\\b.*runs backwards; correct gres.conf`));
  t.false(fs.existsSync(path.join(root, 'system.slice')), 'a gres.conf error is reported before the scope is set up');
  // Lines slurmd stops on stop the agent the same way.
  for (const [text, re] of [['Name=gpu Count=4 File=/dev/nvidia[0-1]\n', /Count=4 does not match File value/], ['Name=gpu MultipleFiles=/dev/nvidia0\n', /MultipleFiles= names one file/]] as const) {
    fs.writeFileSync(gres, text);
    const x = run(['--gres', gres]);
    t.is(x.code, 2, x.stderr);
    t.regex(x.stderr, new RegExp(`^cgstepd: ${gres}:1: ${re.source}.*; correct gres.conf`));
  }
  t.false(fs.existsSync(path.join(root, 'system.slice')));
  const m = run(['--metrics', 'nonsense']);
  t.is(m.code, 2);
  t.regex(m.stderr, /^cgstepd: --metrics: expected \[ADDR:\]PORT, got "nonsense"; give PORT, ADDR:PORT/);
  const flag = run(['--no-such-flag']);
  t.is(flag.code, 2);
  t.is(flag.stderr.trim(), "cgstepd: unknown option '--no-such-flag' (see cgstepd --help)");
});

/** A port nobody listens on now. */
async function freePort(host: string): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, host, () => r()));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

test('--metrics PORT, ADDR:PORT and [::1]:PORT serve /metrics where they say', async (t) => {
  const root = makeTestRoot('mport');
  t.teardown(() => removeTestRoot(root));
  for (const [form, host, url] of [
    ['PORT', '127.0.0.1', (p: number) => `http://127.0.0.1:${p}/metrics`],
    ['127.0.0.1:PORT', '127.0.0.1', (p: number) => `http://127.0.0.1:${p}/metrics`],
    ['[::1]:PORT', '::1', (p: number) => `http://[::1]:${p}/metrics`],
  ] as const) {
    const port = await freePort(host);
    const a = await startAgent({ root, args: ['--ignore-systemd', '--metrics', form.replace('PORT', String(port))] });
    try {
      await waitFor(() => /metrics served/.test(a.log()), 5000, 'metrics log line');
      const res = await fetch(url(port));
      t.is(res.status, 200, form);
      t.regex(await res.text(), /^# HELP /m, form);
    } finally {
      await a.stop();
    }
  }
});

test('sizes: a bare --memory/--swap is MiB on the command line and bytes on the wire', async (t) => {
  // A stand-in agent that records the request line and answers it.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-mib-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const sock = path.join(dir, 's.sock');
  const lines: any[] = [];
  const server = net.createServer((s) => {
    let buf = '';
    s.on('data', (d) => {
      buf += d;
      for (let i; (i = buf.indexOf('\n')) >= 0; buf = buf.slice(i + 1)) {
        const req = JSON.parse(buf.slice(0, i));
        lines.push(req);
        s.write(JSON.stringify({ id: req.id, ok: true, result: { job: String(req.job), created: true, path: '/x' } }) + '\n');
      }
    });
  });
  await new Promise<void>((r) => server.listen(sock, () => r()));
  t.teardown(() => server.close());
  const run = (args: string[]) =>
    new Promise<number | null>((resolve) => {
      const p = spawn(process.execPath, [CGSTEP, '--socket', sock, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
      p.stderr!.on('data', (d) => t.log(String(d)));
      p.once('exit', resolve);
    });
  t.is(await run(['job', 'create', '1', '--memory', '1024', '--swap', '512']), 0);
  t.is(await run(['job', 'create', '2', '--memory', '4G', '--swap', '100K']), 0);
  t.deepEqual(lines.map((l) => [l.job, l.limits.memory, l.limits.swap]), [['1', 1024 * 2 ** 20, 512 * 2 ** 20], ['2', 4 * 2 ** 30, 100 * 1024]]);
  const help = node([CGSTEP, 'job', 'create', '--help']).stdout.replace(/\s+/g, ' ');
  t.regex(help, /--memory <size> .*a bare number is MiB/);
});
