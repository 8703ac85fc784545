/**
 * src/scope/systemd (startDelegatedScope, connectSystemdPort) and
 * src/cgroupfs/wait against a private systemd 252: first creation, the broken
 * unit states Slurm dies on (failed; active with its directory gone), adoption,
 * and the bounded wait for the directory and the pid.
 */
import fs from 'node:fs';
import path from 'node:path';
import { INFINITY_BIN } from '../../src/scope/infinity.js';
import { connectSystemdPort, startDelegatedScope } from '../../src/scope/systemd.js';
import { SystemdCallError, SystemdUnavailableError, connectSystemd, type SystemdManager } from '../../src/systemd/manager.js';
import { waitForPidInCgroup } from '../../src/cgroupfs/index.js';
import { captureLog, readProcs, sandboxSuite, until } from './helpers.js';

let m: SystemdManager;
const { test: sbTest, sandbox: sb } = sandboxSuite('scope', import.meta.url, {
  onUp: async (up, t) => {
    t.log(`sandbox up in ${up.startupMs} ms`);
    m = await connectSystemd({ address: up.busAddress, timeoutMs: 5000 });
  },
  onDown: () => m?.close(),
});

async function infinity(): Promise<number> {
  const p = await sb().spawn([INFINITY_BIN]);
  return p.pid!;
}

function opts(scopeName: string, infinityPid: number, log = captureLog().log) {
  return { manager: m, mountPoint: sb().cgroupDir, cgroupRoot: sb().cgroupDir, slice: 'system.slice', scopeName, infinityPid, timeoutMs: 1000, log };
}

sbTest('first start through the SystemdPort: the scope directory, the pid in it, abandoned, nothing else created', async (t) => {
  const unit = 'node1_slurmstepd.scope';
  const pid = await infinity();
  const cap = captureLog();
  const port = await connectSystemdPort({ address: sb().busAddress, mountPoint: sb().cgroupDir, cgroupRoot: sb().cgroupDir, slice: 'system.slice', scopeName: unit, timeoutMs: 1000, log: cap.log });
  t.is(port.address, sb().busAddress);
  const t0 = performance.now();
  const dir = await port.startScope(pid);
  t.log(`scope ready ${Math.round(performance.now() - t0)} ms after startScope`);
  await port.close();
  t.is(dir, path.join(sb().cgroupDir, 'system.slice', unit));
  t.deepEqual(readProcs(dir), [pid]);
  t.deepEqual(fs.readdirSync(dir).filter((n) => fs.statSync(path.join(dir, n)).isDirectory()), [], 'no system/ or any child: that is the common code');
  t.is(fs.readFileSync(path.join(dir, 'cgroup.subtree_control'), 'utf8').trim(), '');
  t.like(await m.getUnitState(unit), { activeState: 'active', subState: 'abandoned' });
  t.true(cap.messages().includes('delegated scope ready'));
  t.false(cap.lines.some((l) => (l.level as number) >= 40), 'no warnings on a clean start');
  const status = await sb().systemctl('status', unit);
  t.regex(status.stdout, /Active: active \(abandoned\)/);
  await m.stopUnit(unit);
});

sbTest('a failed unit (Slurm: "run reset-failed") is reset and started again', async (t) => {
  const unit = 'node2_slurmstepd.scope';
  // A scope that fails: killed by its RuntimeMaxSec, result "timeout".
  await sb().exec(['systemd-run', '--user', '--scope', `--unit=${unit}`, '-p', 'RuntimeMaxSec=0.2', 'sleep', '60']);
  await until(async () => (await m.getUnitState(unit))?.activeState === 'failed', 5000, `${unit} to fail`);
  const pid = await infinity();
  // That is the state a plain StartTransientUnit (Slurm) cannot get past:
  const plain = await t.throwsAsync(m.startTransientScope({ name: unit, slice: 'system.slice', pids: [pid], delegate: true, tasksMax: 'infinity' }), { instanceOf: SystemdCallError });
  t.is(plain!.dbusName, 'org.freedesktop.systemd1.UnitExists');

  const cap = captureLog();
  const dir = await startDelegatedScope(opts(unit, pid, cap.log));
  t.deepEqual(readProcs(dir), [pid]);
  t.like(await m.getUnitState(unit), { activeState: 'active', subState: 'abandoned', controlGroup: `/system.slice/${unit}` });
  const warn = cap.lines.find((l) => l.level === 40);
  t.truthy(warn, 'a warning says what was found');
  t.regex(String(warn!.msg), /failed.*reset/);
  await m.stopUnit(unit);
});

sbTest('a unit that is active but whose directory is gone is stopped and started again', async (t) => {
  const unit = 'node3_slurmstepd.scope';
  const first = await infinity();
  const dir = await startDelegatedScope(opts(unit, first));
  // Remove the directory behind systemd's back while it cannot look (so it
  // misses the "empty" notification, as when an admin rmdirs it on a busy node).
  process.kill(sb().systemdPid, 'SIGSTOP');
  try {
    fs.writeFileSync(path.join(sb().cgroupDir, 'harness', 'cgroup.procs'), String(first));
    fs.rmdirSync(dir);
  } finally {
    process.kill(sb().systemdPid, 'SIGCONT');
  }
  await new Promise((r) => setTimeout(r, 100));
  t.like(await m.getUnitState(unit), { activeState: 'active' }, 'systemd still believes in the unit');
  t.false(fs.existsSync(dir));
  // Slurm's plain StartTransientUnit fails here:
  await t.throwsAsync(m.startTransientScope({ name: unit, slice: 'system.slice', pids: [first], delegate: true, tasksMax: 'infinity' }), { instanceOf: SystemdCallError });

  const pid = await infinity();
  const cap = captureLog();
  const again = await startDelegatedScope(opts(unit, pid, cap.log));
  t.is(again, dir);
  t.deepEqual(readProcs(again), [pid]);
  t.like(await m.getUnitState(unit), { activeState: 'active', subState: 'abandoned' });
  t.true(cap.lines.some((l) => l.level === 40 && /directory is gone/.test(String(l.msg))), JSON.stringify(cap.lines));
  process.kill(first, 'SIGKILL');
});

sbTest('a healthy existing unit is adopted: same directory, the new pid put in it, a warning when the path is not the expected one', async (t) => {
  const unit = 'node3_slurmstepd.scope'; // left running by the previous test
  const before = await m.getUnitState(unit);
  t.like(before, { activeState: 'active' });
  const dir = sb().hostPath(before!.controlGroup);
  const old = readProcs(dir);
  const pid = await infinity();
  const cap = captureLog();
  // cgroupRoot that does not match where systemd put it: adopt, and say so.
  const got = await startDelegatedScope({ ...opts(unit, pid, cap.log), cgroupRoot: path.join(sb().cgroupDir, 'elsewhere') });
  t.is(got, dir);
  t.deepEqual(readProcs(dir).sort(), [...old, pid].sort());
  const msgs = cap.messages();
  t.true(msgs.some((s) => /adopting/.test(s)), msgs.join('\n'));
  t.true(msgs.some((s) => /elsewhere than expected/.test(s)), msgs.join('\n'));
  t.false(msgs.some((s) => /StartTransientUnit/.test(s)), 'no new unit was asked for');
  await m.stopUnit(unit);
});

sbTest('connectSystemdPort on an unreachable bus fails with SystemdUnavailableError naming it', async (t) => {
  const address = `unix:path=${sb().runtimeDir}/no-such-bus`;
  const err = await t.throwsAsync(
    connectSystemdPort({ address, mountPoint: sb().cgroupDir, cgroupRoot: sb().cgroupDir, slice: 'system.slice', scopeName: 'x.scope', timeoutMs: 500, log: captureLog().log }),
    { instanceOf: SystemdUnavailableError },
  );
  t.true(err!.message.includes(address));
});

sbTest('waitForPidInCgroup: sees a directory made later and a pid moved in later; gives up at its deadline', async (t) => {
  const dir = path.join(sb().cgroupDir, 'waitprobe');
  t.teardown(() => fs.existsSync(dir) && fs.rmdirSync(dir));
  const p = await sb().spawn(['sleep', 'infinity']);
  t.teardown(() => p.kill('SIGKILL'));
  setTimeout(() => fs.mkdirSync(dir), 40);
  setTimeout(() => fs.writeFileSync(path.join(dir, 'cgroup.procs'), String(p.pid)), 120);
  const ok = await waitForPidInCgroup(dir, p.pid!, 2000);
  t.true(ok.ok);
  t.true(ok.elapsedMs >= 100 && ok.elapsedMs < 1000, `${ok.elapsedMs} ms via ${ok.via}`);
  t.log(`pid seen after ${ok.elapsedMs} ms via ${ok.via}`);
  t.deepEqual(await waitForPidInCgroup(dir, p.pid!, 10).then((r) => [r.ok, r.via]), [true, 'immediate']);

  // Moved back out: never appears again within the bound.
  fs.writeFileSync(path.join(sb().cgroupDir, 'harness', 'cgroup.procs'), String(p.pid));
  const t0 = Date.now();
  const no = await waitForPidInCgroup(dir, p.pid!, 150);
  const took = Date.now() - t0;
  t.false(no.ok);
  t.true(no.dirSeen);
  t.is(no.via, 'timeout');
  t.true(took >= 145 && took < 1000, `took ${took} ms`);
  const none = await waitForPidInCgroup(path.join(sb().cgroupDir, 'never'), p.pid!, 50);
  t.false(none.ok);
  t.false(none.dirSeen);
});
