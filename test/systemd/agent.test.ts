/**
 * cgstepd against a real systemd 252 (private user manager + dbus-daemon in a
 * mount and cgroup namespace, test/harness/systemd-sandbox): the five
 * scenarios of the systemd integration. The agent and the clients that start
 * processes run inside the sandbox (a process must be inside the sandbox's
 * cgroup tree to be moved within it); read-only clients talk to the socket
 * from the host.
 */
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startSandbox, type Sandbox } from '../harness/systemd-sandbox.js';
import { CGSTEP, CGSTEPD, cli, sleep, waitFor } from '../helpers/agent.js';
import { CgstepClient } from '../../src/rpc/client.js';
import { sandboxTest } from './helpers.js';

const NODE = process.execPath;
const maybe = sandboxTest(import.meta.url).test;

interface Ctx { sb: Sandbox; dir: string; socket: string }

async function setup(t: any, name: string): Promise<Ctx> {
  const sb = await startSandbox({ name });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `cgstep-sd-${name}-`));
  fs.chmodSync(dir, 0o755);
  t.teardown(async () => {
    try {
      await sb.stop();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
  return { sb, dir, socket: path.join(dir, 's.sock') };
}

async function answers(socket: string): Promise<boolean> {
  try {
    const c = await CgstepClient.connect(socket, { timeoutMs: 2000 });
    await c.request('hello', {});
    c.close();
    return true;
  } catch {
    return false;
  }
}

/** The agent as a plain process inside the sandbox. */
/** The agents' lock files in the test's own directory (removed with it), not the host's /run/cgstepd. */
const lockDir = (c: Ctx) => ['--lock-dir', path.join(c.dir, 'locks')];

async function agentInside(c: Ctx, args: string[], socket = c.socket): Promise<{ proc: ChildProcess; log: () => string }> {
  const proc = await c.sb.spawn([NODE, CGSTEPD, '--socket', socket, ...lockDir(c), '--log-level', 'debug', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout!.on('data', (d) => (out += d));
  proc.stderr!.on('data', (d) => (out += d));
  await waitFor(async () => {
    if (proc.exitCode !== null) throw new Error(`cgstepd exited ${proc.exitCode}: ${out}`);
    return fs.existsSync(socket) && (await answers(socket));
  }, 20000, 'cgstepd inside the sandbox');
  return { proc, log: () => out };
}

function status(socket: string): any {
  const r = cli(socket, ['--json', 'status']);
  if (r.code !== 0) throw new Error(r.stderr);
  return JSON.parse(r.stdout);
}

/** Every directory below dir, relative, sorted (the tree as a string list). */
function treeOf(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) if (e.isDirectory()) {
      out.push(path.relative(dir, path.join(d, e.name)));
      walk(path.join(d, e.name));
    }
  };
  walk(dir);
  return out.sort();
}

maybe('1. first start creates the delegated scope over D-Bus; systemctl status shows it abandoned with the tree', async (t) => {
  const c = await setup(t, 'first');
  const t0 = performance.now();
  const a = await agentInside(c, ['--node-name', 'node1']);
  t.teardown(() => a.proc.kill('SIGTERM'));
  t.log(`agent start to answering in the sandbox: ${(performance.now() - t0).toFixed(0)} ms`);
  const s = status(c.socket);
  t.is(s.mode, 'systemd');
  t.is(s.scope, '/sys/fs/cgroup/system.slice/node1_slurmstepd.scope');
  t.like(s.backends.find((b: any) => b.kind === 'scope'), { type: 'scope/systemd' });
  const runner = await c.sb.spawn([NODE, CGSTEP, '--socket', c.socket, 'run', '5', '0', '--task', '1', '--', 'sleep', '120']);
  t.teardown(() => runner.kill('SIGKILL'));
  const host = c.sb.hostPath('/system.slice/node1_slurmstepd.scope');
  await waitFor(() => fs.existsSync(path.join(host, 'job_5/step_0/user/task_1')) && /populated 1/.test(fs.readFileSync(path.join(host, 'job_5/step_0/user/task_1/cgroup.events'), 'utf8')), 10000, 'the task leaf populated');
  const st = await c.sb.systemctl('status', '--no-pager', 'node1_slurmstepd.scope');
  t.regex(st.stdout, /Active: active \(abandoned\)/);
  t.regex(st.stdout, /Delegate|system/);
  for (const part of ['system', 'cgstep-infinity', 'job_5', 'step_0', 'user', 'task_1', 'sleep 120']) t.true(st.stdout.includes(part), `${part} in:\n${st.stdout}`);
  const show = await c.sb.systemctl('show', '-p', 'Delegate', 'node1_slurmstepd.scope');
  t.regex(show.stdout, /Delegate=yes/);
  t.is(cli(c.socket, ['destroy', '5', '--force']).code, 0);
});

maybe('2. the agent as a Delegate=yes notify service: restart keeps the step and the scope, and still manages it', async (t) => {
  const c = await setup(t, 'svc');
  const t0 = performance.now();
  const run = await c.sb.exec(['systemd-run', '--user', '--unit', 'cgstepd', '-p', 'Delegate=yes', '-p', 'Type=notify', '-p', 'KillMode=mixed', NODE, CGSTEPD, '--socket', c.socket, ...lockDir(c), '--node-name', 'node1'], { timeoutMs: 30000 });
  t.is(run.code, 0, run.stderr);
  const readyMs = performance.now() - t0;
  t.log(`systemd-run to READY=1 (Type=notify): ${readyMs.toFixed(0)} ms`);
  t.teardown(() => c.sb.systemctl('stop', 'cgstepd'));
  const before = status(c.socket);
  t.is(before.mode, 'systemd');
  // The agent left its unit's own cgroup for a subgroup (systemd rewrites the former on reload).
  t.regex(fs.readFileSync(`/proc/${before.pid}/cgroup`, 'utf8'), /cgstepd\.service\/agent$/m);
  const sleeper = await c.sb.spawn([NODE, CGSTEP, '--socket', c.socket, 'run', '8', '0', '--', 'sleep', '300']);
  t.teardown(() => sleeper.kill('SIGKILL'));
  const scopeHost = c.sb.hostPath('/system.slice/node1_slurmstepd.scope');
  const taskProcs = path.join(scopeHost, 'job_8/step_0/user/task_0/cgroup.procs');
  await waitFor(() => fs.existsSync(taskProcs) && fs.readFileSync(taskProcs, 'utf8').trim() !== '', 10000, 'the step process');
  const pid = Number(fs.readFileSync(taskProcs, 'utf8').trim());
  const inv = (await c.sb.systemctl('show', '-p', 'InvocationID', 'node1_slurmstepd.scope')).stdout.trim();
  const r0 = performance.now();
  const restart = await c.sb.systemctl('restart', 'cgstepd');
  t.is(restart.code, 0, restart.stderr);
  t.log(`systemctl restart cgstepd to READY=1 with 1 live step: ${(performance.now() - r0).toFixed(0)} ms`);
  const after = status(c.socket);
  t.not(after.pid, before.pid);
  t.true(after.adopted);
  t.is(after.infinityPid, before.infinityPid);
  t.is((await c.sb.systemctl('show', '-p', 'InvocationID', 'node1_slurmstepd.scope')).stdout.trim(), inv, 'the scope was not recreated');
  t.notThrows(() => process.kill(pid, 0), 'the step process survived the restart');
  const stats = JSON.parse(cli(c.socket, ['--json', 'stats', '8', '0']).stdout);
  t.deepEqual(stats.steps[0].tasks['0'].procs, [pid]);
  t.is(cli(c.socket, ['signal', '8', '0', 'KILL']).code, 0);
  await waitFor(() => { try { process.kill(pid, 0); return false; } catch { return true; } }, 5000, 'the step process killed');
  t.is(cli(c.socket, ['destroy', '8']).code, 0);
  t.false(fs.existsSync(path.join(scopeHost, 'job_8')));
});

maybe('2b. restart with 100 live steps: time to ready again', async (t) => {
  const c = await setup(t, 'svc100');
  const run = await c.sb.exec(['systemd-run', '--user', '--unit', 'cgstepd', '-p', 'Delegate=yes', '-p', 'Type=notify', NODE, CGSTEPD, '--socket', c.socket, ...lockDir(c), '--node-name', 'node1', '--log-level', 'warn'], { timeoutMs: 30000 });
  t.is(run.code, 0, run.stderr);
  t.teardown(() => c.sb.systemctl('stop', 'cgstepd'));
  const holders = await c.sb.spawn(['sh', '-c', 'for i in $(seq 100); do sleep 300 & done; wait']);
  t.teardown(() => holders.kill('SIGKILL'));
  const harnessProcs = c.sb.hostPath('/harness');
  let pids: number[] = [];
  await waitFor(() => {
    pids = [];
    for (const p of fs.readFileSync(path.join(harnessProcs, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean).map(Number)) {
      try { if (fs.readFileSync(`/proc/${p}/comm`, 'utf8').trim() === 'sleep' && Number(fs.readFileSync(`/proc/${p}/stat`, 'utf8').split(' ')[3]) === holders.pid) pids.push(p); } catch { /* gone */ }
    }
    return pids.length === 100;
  }, 10000, '100 sleepers');
  const cl = await CgstepClient.connect(c.socket);
  for (let i = 0; i < 100; i++) {
    await cl.request('step.create', { job: 100 + i, step: 0 });
    await cl.request('attach', { job: 100 + i, step: 0, pid: pids[i], task: 0 });
  }
  cl.close();
  const r0 = performance.now();
  t.is((await c.sb.systemctl('restart', 'cgstepd')).code, 0);
  const ms = performance.now() - r0;
  t.log(`systemctl restart cgstepd to READY=1 with 100 live steps: ${ms.toFixed(0)} ms`);
  const s = status(c.socket);
  t.is(s.jobs, 100);
  t.is(s.steps, 100);
  for (const p of pids) t.notThrows(() => process.kill(p, 0));
  const cl2 = await CgstepClient.connect(c.socket);
  for (let i = 0; i < 100; i++) await cl2.request('destroy', { job: 100 + i, force: true });
  cl2.close();
});

maybe('3. daemon-reload and reset-failed with live steps leave controllers and the tree unchanged', async (t) => {
  const c = await setup(t, 'reload');
  const run = await c.sb.exec(['systemd-run', '--user', '--unit', 'cgstepd', '-p', 'Delegate=yes', '-p', 'Type=notify', NODE, CGSTEPD, '--socket', c.socket, ...lockDir(c), '--node-name', 'node1'], { timeoutMs: 30000 });
  t.is(run.code, 0, run.stderr);
  t.teardown(() => c.sb.systemctl('stop', 'cgstepd'));
  const sleeper = await c.sb.spawn([NODE, CGSTEP, '--socket', c.socket, 'run', '9', 'batch', '--task', '2', '--', 'sleep', '300']);
  t.teardown(() => sleeper.kill('SIGKILL'));
  const scopeHost = c.sb.hostPath('/system.slice/node1_slurmstepd.scope');
  await waitFor(() => fs.existsSync(path.join(scopeHost, 'job_9/step_batch/user/task_2')), 10000, 'the step');
  await sleep(200);
  const files = (dir: string) => Object.fromEntries(['cgroup.subtree_control', 'cgroup.controllers'].map((f) => [f, fs.readFileSync(path.join(dir, f), 'utf8')]));
  const before = { tree: treeOf(scopeHost), scope: files(scopeHost), job: files(path.join(scopeHost, 'job_9')), procs: fs.readFileSync(path.join(scopeHost, 'job_9/step_batch/user/task_2/cgroup.procs'), 'utf8') };
  const agentCg = fs.readFileSync(`/proc/${status(c.socket).pid}/cgroup`, 'utf8');
  t.is((await c.sb.systemctl('daemon-reload')).code, 0);
  t.is((await c.sb.systemctl('reset-failed')).code, 0);
  await sleep(300);
  const after = { tree: treeOf(scopeHost), scope: files(scopeHost), job: files(path.join(scopeHost, 'job_9')), procs: fs.readFileSync(path.join(scopeHost, 'job_9/step_batch/user/task_2/cgroup.procs'), 'utf8') };
  t.deepEqual(after, before);
  t.is(fs.readFileSync(`/proc/${status(c.socket).pid}/cgroup`, 'utf8'), agentCg, 'the agent is still in its subgroup');
  t.is(cli(c.socket, ['destroy', '9', '--force']).code, 0);
});

maybe('4. recovery: infinity killed, scope stopped behind the agent, D-Bus unreachable with and without IgnoreSystemdOnFailure', async (t) => {
  const c = await setup(t, 'recover');
  const a = await agentInside(c, ['--node-name', 'node1']);
  t.teardown(() => a.proc.kill('SIGTERM'));
  const s0 = status(c.socket);
  const scopeHost = c.sb.hostPath('/system.slice/node1_slurmstepd.scope');
  const doomed = await c.sb.spawn([NODE, CGSTEP, '--socket', c.socket, 'run', '2', '0', '--', 'sleep', '300']);
  t.teardown(() => doomed.kill('SIGKILL'));
  await waitFor(() => fs.existsSync(path.join(scopeHost, 'job_2/step_0/user/task_0')), 10000, 'the first step');
  // (a) The unit stopped behind the agent's back, with a step in it: systemd kills the scope; the agent makes it again.
  t.is((await c.sb.systemctl('stop', 'node1_slurmstepd.scope')).code, 0);
  await waitFor(() => {
    const s = status(c.socket);
    return !s.degraded.some((d: string) => /scope/.test(d)) && s.jobs === 0 && fs.existsSync(path.join(scopeHost, 'system')) && s.infinityPid !== s0.infinityPid;
  }, 15000, 'the scope re-created').catch((err) => {
    t.log(a.log().split('\n').filter((l) => !/connection accepted/.test(l)).slice(-12).join('\n'));
    const st = status(c.socket);
    t.log(JSON.stringify({ jobs: st.jobs, degraded: st.degraded, inf: st.infinityPid, s0: s0.infinityPid, exists: fs.existsSync(scopeHost), sys: fs.existsSync(path.join(scopeHost, 'system')), tree: fs.existsSync(scopeHost) ? treeOf(scopeHost) : null }));
    throw err;
  });
  t.regex((await c.sb.systemctl('status', '--no-pager', 'node1_slurmstepd.scope')).stdout, /active \(abandoned\)/);
  t.regex(a.log(), /the scope directory is gone/);
  // (b) With a live step, the scope outlives its infinity process; the agent starts a new one.
  const sleeper = await c.sb.spawn([NODE, CGSTEP, '--socket', c.socket, 'run', '3', '0', '--', 'sleep', '300']);
  t.teardown(() => sleeper.kill('SIGKILL'));
  await waitFor(() => fs.existsSync(path.join(scopeHost, 'job_3/step_0/user/task_0')), 10000, 'the step');
  const s1 = status(c.socket);
  process.kill(s1.infinityPid, 'SIGKILL');
  await waitFor(() => status(c.socket).infinityPid !== s1.infinityPid, 10000, 'a new infinity process').catch((err) => {
    t.log(a.log().split('\n').filter((l) => !/connection accepted/.test(l)).slice(-8).join('\n'));
    throw err;
  });
  t.true(fs.readFileSync(path.join(scopeHost, 'system/cgroup.procs'), 'utf8').includes(String(status(c.socket).infinityPid)));
  // (c) D-Bus unreachable, without the option: exit non-zero naming the bus and the option.
  const bad = await c.sb.exec([NODE, CGSTEPD, '--socket', path.join(c.dir, 'b.sock'), ...lockDir(c), '--node-name', 'nobus', '--dbus-address', 'unix:path=/nonexistent/bus'], { timeoutMs: 20000 });
  t.is(bad.code, 1);
  t.regex(bad.stdout + bad.stderr, /unix:path=\/nonexistent\/bus/);
  t.regex(bad.stdout + bad.stderr, /IgnoreSystemdOnFailure=yes/);
  // (d) ...and with it: mkdir mode, said in status.
  const fb = await agentInside(c, ['--node-name', 'fallback', '--dbus-address', 'unix:path=/nonexistent/bus', '--ignore-systemd-on-failure'], path.join(c.dir, 'f.sock'));
  t.teardown(() => fb.proc.kill('SIGTERM'));
  const fs1 = status(path.join(c.dir, 'f.sock'));
  t.is(fs1.mode, 'mkdir');
  const sb = fs1.backends.find((b: any) => b.kind === 'scope');
  t.is(sb.type, 'scope/mkdir');
  t.regex(sb.fellBackFrom, /scope\/systemd: .*nonexistent/);
  t.true(fs1.degraded.some((d: string) => /systemd unavailable/.test(d)));
  t.is(cli(c.socket, ['destroy', '3', '--force']).code, 0);
});

maybe('5. two agents with different --node-name on one machine do not interfere', async (t) => {
  const c = await setup(t, 'two');
  const a = await agentInside(c, ['--node-name', 'node1']);
  t.teardown(() => a.proc.kill('SIGTERM'));
  const s2 = path.join(c.dir, 'two.sock');
  const b = await agentInside(c, ['--node-name', 'node2'], s2);
  t.teardown(() => b.proc.kill('SIGTERM'));
  t.is(status(c.socket).scope, '/sys/fs/cgroup/system.slice/node1_slurmstepd.scope');
  t.is(status(s2).scope, '/sys/fs/cgroup/system.slice/node2_slurmstepd.scope');
  t.is(cli(c.socket, ['step', 'create', '1', '0']).code, 0);
  t.is(cli(s2, ['step', 'create', '1', '0']).code, 0);
  t.is(cli(c.socket, ['destroy', '1']).code, 0);
  t.deepEqual(JSON.parse(cli(s2, ['--json', 'list']).stdout).jobs.map((j: any) => j.job), ['1']);
  t.deepEqual(JSON.parse(cli(c.socket, ['--json', 'list']).stdout).jobs, []);
  b.proc.kill('SIGTERM');
  await new Promise((r) => b.proc.once('exit', r));
  t.false(status(c.socket).degraded.some((d: string) => /scope/.test(d)));
  t.regex((await c.sb.systemctl('status', '--no-pager', 'node2_slurmstepd.scope')).stdout, /active \(abandoned\)/, "node2's scope outlives its agent");
});
