/**
 * src/systemd/notify: datagrams to real AF_UNIX sockets (a path and an
 * abstract name), the watchdog timer, and a real systemd 252 that waits for
 * READY=1 (Type=notify), shows STATUS=, and kills a service that stops
 * pinging its watchdog (WatchdogSec=).
 */
import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { AgentError } from '../../src/errors.js';
import { notify, ready, startWatchdog, status, stopping, watchdogIntervalMs } from '../../src/systemd/notify.js';
import { sandboxSupport, startSandbox, type Sandbox } from '../harness/systemd-sandbox.js';
import { DatagramListener, sleep, until } from './helpers.js';

const FIXTURE = path.resolve('test/systemd/fixtures/agent-fixture.ts');

/** Run fn with these environment variables, restoring them afterwards (tests using it are serial). */
async function withEnv<T>(vars: Record<string, string | undefined>, fn: () => T | Promise<T>): Promise<T> {
  const saved: Record<string, string | undefined> = {};
  for (const k of Object.keys(vars)) {
    saved[k] = process.env[k];
    if (vars[k] === undefined) delete process.env[k];
    else process.env[k] = vars[k];
  }
  try {
    return await fn();
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

function tmpdir(t: { teardown: (f: () => void) => void }): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-notify-'));
  t.teardown(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}

test.serial('without NOTIFY_SOCKET nothing is sent and notify() says so', async (t) => {
  await withEnv({ NOTIFY_SOCKET: undefined, WATCHDOG_USEC: undefined }, () => {
    t.false(notify('READY=1'));
    t.false(ready('x'));
    const stop = startWatchdog();
    stop();
  });
});

test.serial('READY=1, STATUS= and STOPPING=1 reach a datagram socket at a path', async (t) => {
  const sock = path.join(tmpdir(t), 'notify');
  const l = new DatagramListener(sock);
  t.teardown(() => l.close());
  await withEnv({ NOTIFY_SOCKET: sock }, async () => {
    t.true(ready('up: 0 jobs, 0 steps'));
    t.is(await l.recv(), 'READY=1\nSTATUS=up: 0 jobs, 0 steps');
    t.true(status('two\nlines'));
    t.is(await l.recv(), 'STATUS=two lines', 'a newline cannot start a new assignment');
    t.true(stopping());
    t.is(await l.recv(), 'STOPPING=1');
    t.is(l.tryRecv(), null);
  });
});

test.serial('an abstract-namespace NOTIFY_SOCKET (@name) works too', async (t) => {
  const name = `@cgstep-notify-test-${process.pid}`;
  const l = new DatagramListener(name);
  t.teardown(() => l.close());
  await withEnv({ NOTIFY_SOCKET: name }, async () => {
    t.true(notify('READY=1'));
    t.is(await l.recv(), 'READY=1');
  });
});

test.serial('a NOTIFY_SOCKET nobody listens on, or a malformed one, throws a named AgentError', async (t) => {
  const sock = path.join(tmpdir(t), 'nobody');
  await withEnv({ NOTIFY_SOCKET: sock }, () => {
    const e = t.throws(() => notify('READY=1'), { instanceOf: AgentError });
    t.is((e as AgentError).code, 'ENOENT');
    t.true(e!.message.includes(sock));
  });
  await withEnv({ NOTIFY_SOCKET: 'relative/path' }, () => {
    t.is((t.throws(() => notify('READY=1'), { instanceOf: AgentError }) as AgentError).code, 'EINVAL');
  });
  await withEnv({ NOTIFY_SOCKET: `/${'x'.repeat(200)}` }, () => {
    t.is((t.throws(() => notify('READY=1'), { instanceOf: AgentError }) as AgentError).code, 'EINVAL');
  });
});

test.serial('the watchdog pings every WATCHDOG_USEC/2, only for our pid, and stops when told', async (t) => {
  t.is(watchdogIntervalMs({ WATCHDOG_USEC: '30000000' }), 15000);
  t.is(watchdogIntervalMs({ WATCHDOG_USEC: '30000000', WATCHDOG_PID: String(process.pid) }), 15000);
  t.is(watchdogIntervalMs({ WATCHDOG_USEC: '30000000', WATCHDOG_PID: String(process.pid + 1) }), null);
  t.is(watchdogIntervalMs({ WATCHDOG_USEC: 'junk' }), null);
  t.is(watchdogIntervalMs({}), null);

  const sock = path.join(tmpdir(t), 'wd');
  const l = new DatagramListener(sock);
  t.teardown(() => l.close());
  await withEnv({ NOTIFY_SOCKET: sock, WATCHDOG_USEC: '100000', WATCHDOG_PID: undefined }, async () => {
    const stop = startWatchdog();
    t.is(await l.recv(), 'WATCHDOG=1', 'one ping at once');
    await sleep(230); // 50 ms period: about 4 more
    stop();
    let n = 0;
    while (l.tryRecv() === 'WATCHDOG=1') n++;
    t.true(n >= 2 && n <= 6, `${n} pings in 230 ms`);
    await sleep(120);
    t.is(l.tryRecv(), null, 'no ping after stop');
  });
  await withEnv({ NOTIFY_SOCKET: sock, WATCHDOG_USEC: '100000', WATCHDOG_PID: '1' }, async () => {
    const stop = startWatchdog();
    await sleep(80);
    stop();
    t.is(l.tryRecv(), null, 'WATCHDOG_PID names another process: no pings');
  });
});

(sandboxSupport().ok ? test.serial : test.serial.skip)('a real systemd: Type=notify waits for READY=1, shows STATUS=, and WatchdogSec= kills a silent service', async (t) => {
  let sb: Sandbox | undefined;
  t.teardown(async () => sb?.stop());
  sb = await startSandbox({ name: 'notify' });
  const dir = tmpdir(t);
  const node = process.execPath;
  const run = (unit: string, fixtureFlags: string[], state: string) =>
    sb!.exec(['systemd-run', '--user', `--unit=${unit}`, '--same-dir', '-p', 'Type=notify', '-p', 'WatchdogSec=1', '--', node, '--import', 'tsx', FIXTURE, state, '--no-move', ...fixtureFlags]);

  // systemd-run returns when the start job is done, which for Type=notify is READY=1.
  const okState = path.join(dir, 'ok.json');
  const r = await run('notify-ok.service', [], okState);
  t.is(r.code, 0, r.stderr);
  const show = (unit: string) => sb!.systemctl('show', '-p', 'ActiveState', '-p', 'SubState', '-p', 'StatusText', '-p', 'Result', '-p', 'MainPID', unit);
  let s = (await show('notify-ok.service')).stdout;
  t.regex(s, /^ActiveState=active$/m);
  const rec = JSON.parse(fs.readFileSync(okState, 'utf8'));
  t.regex(s, new RegExp(`^StatusText=fixture ${rec.pid} ready$`, 'm'));
  t.regex(s, new RegExp(`^MainPID=${rec.pid}$`, 'm'));
  t.truthy(rec.notifySocket);

  // The silent one (same unit settings, no pings) is killed by the watchdog...
  const silent = await run('notify-silent.service', ['--no-watchdog'], path.join(dir, 'silent.json'));
  t.is(silent.code, 0, silent.stderr);
  await until(async () => /^Result=watchdog$/m.test((await show('notify-silent.service')).stdout), 8000, 'the silent service to be killed by its watchdog');
  // ...while the pinging one, older than that, is still running.
  s = (await show('notify-ok.service')).stdout;
  t.regex(s, /^ActiveState=active$/m);
  t.regex(s, /^Result=success$/m);
  t.log((await sb.systemctl('status', 'notify-ok.service')).stdout.split('\n').slice(0, 4).join('\n'));
});
