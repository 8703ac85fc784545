/**
 * systemd/cgstepd.service under a real systemd 252 (the sandbox's user
 * manager), with only ExecStart swapped for the agent fixture: its hardening
 * leaves cgroup writes and D-Bus working, Type=notify start waits for READY=1,
 * and neither `systemctl restart` nor a crash (Restart=on-failure) touches the
 * node scope and its processes: they live in the scope, not in the service.
 */
import fs from 'node:fs';
import path from 'node:path';
import { readProcs, sandboxSuite, until } from './helpers.js';

const FIXTURE = path.resolve('test/systemd/fixtures/agent-fixture.ts');
const UNIT_FILE = path.resolve('systemd/cgstepd.service');
const { test: sbTest, sandbox: sb } = sandboxSuite('unitfile', import.meta.url);

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return !/^\S+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

sbTest('the shipped unit: READY after the scope exists, restart and crash keep the scope and its processes', async (t) => {
  // State goes where PrivateTmp= cannot hide it.
  const stateDir = path.join(sb().runtimeDir, 'unit-test');
  fs.mkdirSync(stateDir);
  const state = path.join(stateDir, 'state.json');
  const scope = 'node9_slurmstepd.scope';
  const shipped = fs.readFileSync(UNIT_FILE, 'utf8');
  t.regex(shipped, /^ExecStart=\/usr\/local\/bin\/cgstepd /m);
  const adapted = shipped
    .replace(/^ExecStart=.*$/m, `ExecStart=${process.execPath} --import tsx ${FIXTURE} ${state} --scope ${scope}`)
    .replace(/^EnvironmentFile=.*$/m, `WorkingDirectory=${process.cwd()}\nEnvironment=DBUS_SYSTEM_BUS_ADDRESS=${sb().busAddress}`)
    // PrivateTmp hides a tree that lives in /tmp (a clean clone there) from the unit.
    .replace(/^PrivateTmp=yes$/m, /^\/(var\/)?tmp\//.test(process.cwd()) ? 'PrivateTmp=no' : 'PrivateTmp=yes');
  fs.writeFileSync(path.join(sb().runtimeDir, 'config/systemd/user/cgstepd.service'), adapted);
  // hugetlb reachable from the unit's cgroup (systemd 252 does not manage it).
  fs.writeFileSync(path.join(sb().cgroupDir, 'cgroup.subtree_control'), '+hugetlb');
  fs.writeFileSync(path.join(sb().cgroupDir, 'app.slice', 'cgroup.subtree_control'), '+hugetlb');
  t.is((await sb().systemctl('daemon-reload')).code, 0);

  const start = await sb().systemctl('start', 'cgstepd.service');
  t.is(start.code, 0, `${start.stderr}\n${sb().logTail()}`);
  const first = JSON.parse(fs.readFileSync(state, 'utf8'));
  t.log(JSON.stringify(first));
  t.falsy(first.error, first.error);
  t.is(first.after, '/app.slice/cgstepd.service/agent');
  t.is(first.enableAfter, 'ok', 'cgroup writes work under the unit hardening');
  t.like(first.scope, { dir: `/sys/fs/cgroup/system.slice/${scope}`, adopted: false });
  const infinityPid: number = first.scope.infinityPid;
  const scopeDir = sb().hostPath(`/system.slice/${scope}`);
  t.deepEqual(readProcs(scopeDir), [infinityPid]);
  const show = async () => (await sb().systemctl('show', '-p', 'ActiveState', '-p', 'MainPID', '-p', 'KillMode', '-p', 'Delegate', '-p', 'WatchdogUSec', '-p', 'NRestarts', 'cgstepd.service')).stdout;
  let s = await show();
  t.regex(s, /^ActiveState=active$/m);
  t.regex(s, new RegExp(`^MainPID=${first.pid}$`, 'm'));
  t.regex(s, /^KillMode=mixed$/m);
  t.regex(s, /^Delegate=yes$/m);
  t.regex(s, /^WatchdogUSec=30s$/m);
  t.log((await sb().systemctl('status', 'cgstepd.service', scope)).stdout);

  // systemctl restart: a new agent, the same scope, the same processes in it.
  fs.rmSync(state);
  const restart = await sb().systemctl('restart', 'cgstepd.service');
  t.is(restart.code, 0, restart.stderr);
  const second = JSON.parse(fs.readFileSync(state, 'utf8'));
  t.not(second.pid, first.pid);
  t.like(second.scope, { adopted: true });
  t.true(alive(infinityPid), 'the scope process survived the restart');
  t.deepEqual(readProcs(scopeDir), [infinityPid]);
  t.is((await sb().systemctl('is-active', scope)).stdout.trim(), 'active');

  // A crash: SIGKILL the agent; Restart=on-failure brings a new one (RestartSec=1s).
  fs.rmSync(state);
  process.kill(second.pid, 'SIGKILL');
  await until(() => fs.existsSync(state), 10000, 'the restarted agent to write its state');
  const third = JSON.parse(fs.readFileSync(state, 'utf8'));
  t.not(third.pid, second.pid);
  await until(async () => /^ActiveState=active$/m.test(await show()), 5000, 'the service to be active again');
  s = await show();
  t.regex(s, /^NRestarts=1$/m);
  t.true(alive(infinityPid));
  t.deepEqual(readProcs(scopeDir), [infinityPid]);

  // Stopping the service leaves the scope (the steps) running.
  t.is((await sb().systemctl('stop', 'cgstepd.service')).code, 0);
  t.false(alive(third.pid));
  t.true(alive(infinityPid));
  t.is((await sb().systemctl('is-active', scope)).stdout.trim(), 'active');
});
