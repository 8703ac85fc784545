/**
 * src/systemd/manager against real buses: unreachable addresses, a socket that
 * never answers, a bus without systemd, and a private systemd 252 (the
 * sandbox harness) for StartTransientUnit/AbandonScope/GetUnit/StopUnit and
 * call timeouts.
 */
import test from 'ava';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { AgentError } from '../../src/errors.js';
import { INFINITY_BIN } from '../../src/scope/infinity.js';
import { getXattr } from '../../src/cgroupfs/index.js';
import { SystemdCallError, SystemdUnavailableError, connectSystemd, type SystemdManager } from '../../src/systemd/manager.js';
import { readProcs, sandboxSuite, startBareBus } from './helpers.js';

let m: SystemdManager;
const { test: sbTest, sandbox: sb } = sandboxSuite('manager', import.meta.url, {
  onUp: async (up, t) => {
    t.log(`sandbox up in ${up.startupMs} ms at ${up.cgroupDir}`);
    m = await connectSystemd({ address: up.busAddress, timeoutMs: 5000 });
  },
  onDown: () => m?.close(),
});

test('an unreachable bus gives SystemdUnavailableError naming the address', async (t) => {
  const missing = `unix:path=/run/cgstep-no-such-dir-${process.pid}/bus`;
  const e1 = await t.throwsAsync(connectSystemd({ address: missing, timeoutMs: 1000 }), { instanceOf: SystemdUnavailableError });
  t.true(e1!.message.includes(missing), e1!.message);
  t.is((e1 as AgentError).code, 'ENOENT');

  // A path that exists but where nobody listens.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-bus-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.writeFileSync(path.join(dir, 'bus'), '');
  const refused = `unix:path=${dir}/bus`;
  const e2 = await t.throwsAsync(connectSystemd({ address: refused, timeoutMs: 1000 }), { instanceOf: SystemdUnavailableError });
  t.true(e2!.message.includes(refused), e2!.message);

  // No address: DBUS_SYSTEM_BUS_ADDRESS is used (and named).
  const saved = process.env.DBUS_SYSTEM_BUS_ADDRESS;
  process.env.DBUS_SYSTEM_BUS_ADDRESS = missing;
  try {
    const e3 = await t.throwsAsync(connectSystemd({ timeoutMs: 1000 }), { instanceOf: SystemdUnavailableError });
    t.true(e3!.message.includes(missing));
  } finally {
    if (saved === undefined) delete process.env.DBUS_SYSTEM_BUS_ADDRESS;
    else process.env.DBUS_SYSTEM_BUS_ADDRESS = saved;
  }
});

test('a bus socket that never answers the handshake times out with ETIMEDOUT', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-mute-'));
  const sock = path.join(dir, 'bus');
  const held: net.Socket[] = [];
  const server = net.createServer((c) => void held.push(c)); // accepts, never writes
  await new Promise<void>((r) => server.listen(sock, r));
  t.teardown(() => {
    for (const c of held) c.destroy();
    server.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const t0 = Date.now();
  const err = await t.throwsAsync(connectSystemd({ address: `unix:path=${sock}`, timeoutMs: 300 }), { instanceOf: SystemdUnavailableError });
  const took = Date.now() - t0;
  t.is((err as AgentError).code, 'ETIMEDOUT');
  t.true(err!.message.includes(sock), err!.message);
  t.true(took >= 290 && took < 2000, `took ${took} ms`);
});

sbTest('a bus without systemd on it gives SystemdUnavailableError', async (t) => {
  const bus = startBareBus();
  t.teardown(bus.stop);
  const bare = await connectSystemd({ address: bus.address, timeoutMs: 2000 });
  t.teardown(() => bare.close());
  const err = await t.throwsAsync(bare.getUnitState('node1_slurmstepd.scope'), { instanceOf: SystemdUnavailableError });
  t.true(err!.message.includes(bus.address), err!.message);
});

sbTest('StartTransientUnit + AbandonScope: a delegated, abandoned scope holding the infinity process', async (t) => {
  const unit = 'node1_slurmstepd.scope';
  const bin = fs.existsSync(INFINITY_BIN) ? INFINITY_BIN : null;
  t.truthy(bin, `the infinity helper ${INFINITY_BIN} is built by npm install`);
  const inf = await sb().spawn([bin!]);
  const pid = inf.pid!;
  t.is(await m.getUnitState(unit), null);

  await m.startTransientScope({ name: unit, slice: 'system.slice', pids: [pid], delegate: true, tasksMax: 'infinity' });
  await m.abandonScope(unit);
  const st = await m.getUnitState(unit);
  t.deepEqual(st, { loadState: 'loaded', activeState: 'active', subState: 'abandoned', controlGroup: '/system.slice/node1_slurmstepd.scope' });
  const dir = sb().hostPath(st!.controlGroup);
  t.deepEqual(readProcs(dir), [pid]);
  // systemd 252 sets trusted.delegate only as the system manager (no xattrs from user managers).
  t.is(getXattr(dir, 'trusted.delegate'), null);

  const status = await sb().systemctl('status', unit);
  t.log(status.stdout);
  t.regex(status.stdout, /Active: active \(abandoned\)/);
  t.regex(status.stdout, new RegExp(`${pid} .*cgstep-infinity`));
  const show = await sb().systemctl('show', '-p', 'Delegate', '-p', 'TasksMax', '-p', 'Slice', unit);
  t.regex(show.stdout, /^Delegate=yes$/m);
  t.regex(show.stdout, /^TasksMax=infinity$/m);
  t.regex(show.stdout, /^Slice=system\.slice$/m);

  // The same name again: systemd refuses, and the error says so in our terms.
  const again = await t.throwsAsync(m.startTransientScope({ name: unit, slice: 'system.slice', pids: [pid], delegate: true, tasksMax: 'infinity' }), {
    instanceOf: SystemdCallError,
  });
  t.is((again as AgentError).code, 'EEXIST');
  t.true(again!.message.includes('StartTransientUnit') && again!.message.includes(sb().busAddress));

  // stopUnit waits for the job: when it resolves the unit is gone and the process was killed.
  const exited = new Promise((r) => inf.once('exit', r));
  await m.stopUnit(unit);
  t.is(await m.getUnitState(unit), null);
  await exited;
  t.false(fs.existsSync(dir));
  // Not loaded: nothing to stop or reset, no error.
  await m.stopUnit(unit);
  await m.resetFailedUnit(unit);
});

sbTest('a call systemd does not answer times out with ETIMEDOUT naming the method and the bus', async (t) => {
  const quick = await connectSystemd({ address: sb().busAddress, timeoutMs: 300 });
  t.teardown(() => quick.close());
  process.kill(sb().systemdPid, 'SIGSTOP');
  let took: number;
  let err: Error | undefined;
  try {
    const t0 = Date.now();
    err = await t.throwsAsync(quick.getUnitState('node1_slurmstepd.scope'));
    took = Date.now() - t0;
  } finally {
    process.kill(sb().systemdPid, 'SIGCONT');
  }
  t.true(err instanceof AgentError);
  t.is((err as AgentError).code, 'ETIMEDOUT');
  t.true(err!.message.includes('GetUnit') && err!.message.includes(sb().busAddress), err!.message);
  t.true(took! >= 290 && took! < 2000, `took ${took!} ms`);
  // The late reply is dropped quietly and the connection still works.
  t.is(await quick.getUnitState('node1_slurmstepd.scope'), null);
  t.is(await quick.systemState(), 'running');
});

sbTest('StartTransientUnit with a pid that no longer exists is refused, naming the method and the unit', async (t) => {
  const gone = await sb().spawn(['sleep', 'infinity']);
  const pid = gone.pid!;
  const exited = new Promise((r) => gone.once('exit', r));
  process.kill(pid, 'SIGKILL');
  await exited;
  const err = await t.throwsAsync(m.startTransientScope({ name: 'nodeX_slurmstepd.scope', slice: 'system.slice', pids: [pid], delegate: true, tasksMax: 'infinity' }), {
    instanceOf: SystemdCallError,
  });
  t.regex(err!.message, /StartTransientUnit\(nodeX_slurmstepd\.scope\)/);
  t.regex(err!.message, new RegExp(String(pid)));
  t.is(await m.getUnitState('nodeX_slurmstepd.scope'), null);
});
