/**
 * Runs INSIDE the VM in its second boot mode: the host's systemd is PID 1 on
 * the overlay root, cgstepd runs as the shipped systemd/cgstepd.service
 * (installed unchanged, Delegate=yes) on the real system bus, and this file
 * runs as the oneshot cgstep-vm-test.service (test/vm/vm.test.ts writes the
 * units). Point 6 of the lane: systemd as PID 1.
 */
import test from 'ava';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { CGSTEP, REPO, waitFor, sleep, killPid } from '../../helpers/agent.js';

const SOCKET = '/run/cgstepd/cgstepd.sock';
const CG = '/sys/fs/cgroup';
const SCOPE = path.join(CG, 'system.slice', 'slurmstepd.scope');
const JOB = '7';

function sh(cmd: string, args: string[], timeout = 60000): { code: number | null; out: string; err: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout });
  return { code: r.status, out: String(r.stdout ?? ''), err: String(r.stderr ?? '') };
}
const systemctl = (...args: string[]) => sh('systemctl', ['--no-pager', ...args]);
const cgstep = (...args: string[]) => sh(process.execPath, [CGSTEP, '--socket', SOCKET, ...args]);
const read = (f: string) => fs.readFileSync(f, 'utf8').trim();
const mainPid = () => Number(systemctl('show', '-p', 'MainPID', '--value', 'cgstepd').out.trim());
const cgroupOf = (pid: number) => read(`/proc/${pid}/cgroup`).split('\n').find((l) => l.startsWith('0::'))!.slice(3);

const ctx = {} as { run?: ChildProcess; sleepPid?: number };

test.after.always(() => {
  cgstep('destroy', JOB, '--force');
  killPid(ctx.run?.pid);
});

test.serial('6 systemd: PID 1 is systemd, cgstepd runs as the shipped unit with Delegate=yes on the system bus, in cgstepd.service/agent', async (t) => {
  t.is(read('/proc/1/comm'), 'systemd');
  t.log(`systemd: ${sh('systemctl', ['--version']).out.split('\n')[0]}; system bus ${fs.existsSync('/run/dbus/system_bus_socket') ? 'up' : 'absent'}`);
  t.is(read('/etc/systemd/system/cgstepd.service'), read(path.join(REPO, 'systemd/cgstepd.service')), 'the unit is the shipped file, unchanged');
  await waitFor(() => systemctl('is-active', 'cgstepd').out.trim() === 'active', 60000, 'cgstepd.service active').catch((err) => {
    t.log(systemctl('status', 'cgstepd').out);
    t.log(sh('journalctl', ['--no-pager', '-u', 'cgstepd', '-n', '40']).out);
    throw err;
  });
  t.is(systemctl('show', '-p', 'Delegate', '--value', 'cgstepd').out.trim(), 'yes');
  const pid = mainPid();
  t.is(cgroupOf(pid), '/system.slice/cgstepd.service/agent');
  const st = JSON.parse(cgstep('--json', 'status').out);
  t.log(`cgstep status: ${st.mode} mode, scope ${st.scope}, controllers enabled ${st.controllers.enabled.join(' ')}`);
  t.is(st.mode, 'systemd');
  t.is(st.scope, SCOPE);
  t.is(st.pid, pid);
  const status = systemctl('status', '-n', '0', 'cgstepd');
  t.log(status.out.trim());
  t.regex(status.out, /Active: active \(running\)/);
});

test.serial('6 systemd: a step runs in slurmstepd.scope and systemctl status shows the job/step/task tree', async (t) => {
  const made = cgstep('job', 'create', JOB, '--cpus', '1');
  t.is(made.code, 0, made.err);
  ctx.run = spawn(process.execPath, [CGSTEP, '--socket', SOCKET, 'run', JOB, '0', '--', 'sleep', '600'], { stdio: 'ignore' });
  const task = path.join(SCOPE, `job_${JOB}`, 'step_0', 'user', 'task_0');
  // cgstep run's shell waits in the task until placed, then execs sleep.
  const comm = () => {
    try {
      const pid = read(path.join(task, 'cgroup.procs')).split('\n')[0];
      return pid && read(`/proc/${pid}/comm`) === 'sleep' ? Number(pid) : 0;
    } catch {
      return 0;
    }
  };
  await waitFor(() => comm() > 0, 30000, 'the sleep in task_0');
  ctx.sleepPid = comm();
  const st = systemctl('status', '-n', '0', 'slurmstepd.scope');
  t.log(st.out.trim());
  t.regex(st.out, /slurmstepd\.scope/);
  t.regex(st.out, /Active: active \((running|abandoned)\)/);
  for (const d of [`job_${JOB}`, 'step_0', 'user', 'task_0', 'system']) t.regex(st.out, new RegExp(`─${d}\\b`), `${d} in the tree`);
  t.regex(st.out, new RegExp(`${ctx.sleepPid} sleep 600`));
  t.regex(st.out, /cgstep-infinity/);
});

function snapshot() {
  const files = (dir: string, names: string[]) => Object.fromEntries(names.map((f) => [f, read(path.join(dir, f))]));
  return {
    scope: files(SCOPE, ['cgroup.controllers', 'cgroup.subtree_control', 'cpuset.cpus', 'cpuset.cpus.effective', 'cpuset.mems.effective']),
    job: files(path.join(SCOPE, `job_${JOB}`), ['cgroup.controllers', 'cgroup.subtree_control', 'cpuset.cpus', 'cpuset.cpus.effective']),
    user: files(path.join(SCOPE, `job_${JOB}`, 'step_0', 'user'), ['cgroup.controllers', 'cgroup.subtree_control']),
    sleep: cgroupOf(ctx.sleepPid!),
  };
}

test.serial('6 systemd: systemctl daemon-reload leaves the controllers and the cpusets of the scope and the job intact', async (t) => {
  t.truthy(ctx.sleepPid, 'needs the step of the previous test');
  const before = snapshot();
  t.log(`before: ${JSON.stringify(before)}`);
  t.is(before.job['cpuset.cpus'], '1');
  for (const c of ['cpuset', 'cpu', 'memory', 'pids', 'io']) t.true(before.scope['cgroup.subtree_control'].split(' ').includes(c), `${c} enabled in the scope`);
  const agentCg = cgroupOf(mainPid());
  const r = systemctl('daemon-reload');
  t.is(r.code, 0, r.err);
  await sleep(500);
  const after = snapshot();
  t.deepEqual(after, before);
  t.is(cgroupOf(mainPid()), agentCg, 'the agent is still in its subgroup');
  t.is(systemctl('is-active', 'cgstepd').out.trim(), 'active');
});

test.serial('6 systemd: systemctl restart cgstepd keeps the running step; the new agent adopts it', async (t) => {
  t.truthy(ctx.sleepPid, 'needs the step of the earlier test');
  const pid0 = mainPid();
  const before = snapshot();
  const t0 = performance.now();
  const r = systemctl('restart', 'cgstepd');
  t.is(r.code, 0, r.err);
  t.log(`systemctl restart cgstepd: ${(performance.now() - t0).toFixed(0)} ms`);
  const pid1 = mainPid();
  t.not(pid1, pid0, 'a new agent process');
  t.notThrows(() => process.kill(ctx.sleepPid!, 0), 'the step process lives');
  t.deepEqual(snapshot(), before, 'tree, controllers and cpusets unchanged');
  const list = JSON.parse(cgstep('--json', 'list').out);
  t.log(`cgstep list: ${JSON.stringify(list)}`);
  const job = list.jobs.find((j: any) => j.job === JOB);
  t.truthy(job, 'the new agent lists the job');
  t.deepEqual(job.steps.map((s: any) => [s.step, s.tasks]), [['0', ['task_0']]]);
  const st = JSON.parse(cgstep('--json', 'status').out);
  t.is(st.pid, pid1);
  t.is(st.mode, 'systemd');
  const run = ctx.run!;
  const exited = new Promise<number | null>((resolve) => (run.exitCode !== null ? resolve(run.exitCode) : run.once('exit', (code, sig) => resolve(sig ? 128 + 9 : code))));
  const d = cgstep('destroy', JOB, '--force');
  t.is(d.code, 0, d.err);
  t.false(fs.existsSync(path.join(SCOPE, `job_${JOB}`)), 'the job is gone');
  t.is(await exited, 137, 'cgstep run reports its command killed');
});
