/**
 * Node trouble: the agent gives a clear error for what is affected, stays up
 * for the rest, and `cgstep status` says what is degraded.
 */
import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { makeTestRoot, removeTestRoot } from '../helpers/cgroup.js';
import { CGSTEPD, killPid, sleep, spawnSleeper, startAgent, waitFor } from '../helpers/agent.js';

function runInMountNs(script: string): { code: number | null; out: string } {
  const r = spawnSync('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', script], { encoding: 'utf8', timeout: 30000 });
  return { code: r.status, out: `${r.stdout}${r.stderr}` };
}

test('a read-only cgroup2 mount and a missing one are refused at start with a clear message', (t) => {
  const root = makeTestRoot('ro');
  t.teardown(() => removeTestRoot(root));
  const ro = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-ro-'));
  t.teardown(() => fs.rmSync(ro, { recursive: true, force: true }));
  // The sockets in a directory only root can write (mkdtemp's 0700), as the agent requires.
  const sockets = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-ro-sock-'));
  t.teardown(() => fs.rmSync(sockets, { recursive: true, force: true }));
  const r = runInMountNs(`mount --bind ${root} ${ro} && mount -o remount,bind,ro ${ro} && exec ${process.execPath} ${CGSTEPD} --ignore-systemd --cgroup-root ${ro} --socket ${sockets}/s.sock`);
  t.is(r.code, 1);
  t.regex(r.out, /mounted read-only/);
  const none = runInMountNs(`umount -l /sys/fs/cgroup/unified 2>/dev/null; umount -l /sys/fs/cgroup 2>/dev/null; exec ${process.execPath} ${CGSTEPD} --ignore-systemd --socket ${sockets}/s2.sock`);
  t.is(none.code, 1);
  t.regex(none.out, /no cgroup2 filesystem is mounted/);
});

test('a refused subtree_control write fails that request with the path and errno; the agent serves the rest', async (t) => {
  const root = makeTestRoot('busy');
  const p = spawnSleeper();
  t.teardown(async () => {
    killPid(p.pid);
    await removeTestRoot(root);
  });
  const a = await startAgent({ root, args: ['--ignore-systemd'] });
  t.teardown(() => a.stop());
  t.is(a.cli(['job', 'create', '9']).code, 0);
  const scope = JSON.parse(a.cli(['--json', 'status']).stdout).scope;
  // A process inside the job directory itself: the kernel's no-internal-process rule.
  fs.writeFileSync(path.join(scope, 'job_9', 'cgroup.subtree_control'), '-hugetlb');
  fs.writeFileSync(path.join(scope, 'job_9', 'cgroup.procs'), String(p.pid));
  const r = a.cli(['step', 'create', '9', '0']);
  t.is(r.code, 1);
  t.regex(r.stderr, /EBUSY: write "\+hugetlb" to .*job_9\/cgroup\.subtree_control: EBUSY/);
  t.is(a.cli(['step', 'create', '10', '0']).code, 0, 'other jobs are unaffected');
  t.is(a.cli(['status']).code, 0);
});

test('the scope removed behind the agent: it is made again, and new steps work', async (t) => {
  const root = makeTestRoot('gone');
  t.teardown(() => removeTestRoot(root));
  const a = await startAgent({ root, args: ['--ignore-systemd', '--node-name', 'g'] });
  t.teardown(() => a.stop());
  const s = JSON.parse(a.cli(['--json', 'status']).stdout);
  // Empty the scope and remove it. The killed infinity process holds system/
  // until the agent reaps it (slow on a loaded machine), and the agent's guard
  // may start a new one meanwhile: kill whatever is there (by pid) until the rmdir works.
  await waitFor(() => {
    const procs = path.join(s.scope, 'system', 'cgroup.procs');
    if (fs.existsSync(procs)) for (const pid of fs.readFileSync(procs, 'utf8').split('\n').filter(Boolean)) killPid(Number(pid));
    try {
      if (fs.existsSync(path.join(s.scope, 'system'))) fs.rmdirSync(path.join(s.scope, 'system'));
      fs.rmdirSync(s.scope);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EBUSY') throw err;
      return false;
    }
  }, 5000, 'the scope to be removable');
  await waitFor(() => fs.existsSync(path.join(s.scope, 'system')), 5000, 'the scope made again');
  // The log line is written before the scope is made again, but reaches this process through a pipe.
  await waitFor(() => /the scope directory is gone/.test(a.log()), 5000, 'the guard to log the re-creation');
  const d = JSON.parse(a.cli(['--json', 'status']).stdout);
  t.not(d.infinityPid, s.infinityPid);
  t.false(d.degraded.some((x: string) => /scope/.test(x)));
  t.is(a.cli(['step', 'create', '1', '0']).code, 0);
});

test('EMFILE: out of descriptors, the agent refuses what it cannot take and recovers', async (t) => {
  const root = makeTestRoot('emfile');
  t.teardown(() => removeTestRoot(root));
  const sockDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-emfile-'));
  t.teardown(() => fs.rmSync(sockDir, { recursive: true, force: true }));
  const socket = path.join(sockDir, 's.sock');
  const agent = spawn('prlimit', ['--nofile=100', process.execPath, CGSTEPD, '--ignore-systemd', '--cgroup-root', root, '--socket', socket, '--log-level', 'warn'], { stdio: 'ignore' });
  t.teardown(() => killPid(agent.pid));
  for (let i = 0; i < 100 && !fs.existsSync(socket); i++) await sleep(50);
  const conns: net.Socket[] = [];
  t.teardown(() => conns.forEach((c) => c.destroy()));
  for (let i = 0; i < 200; i++) {
    const c = net.connect(socket);
    c.on('error', () => undefined);
    conns.push(c);
  }
  await sleep(500);
  t.is(agent.exitCode, null, 'the agent is still running');
  conns.forEach((c) => c.destroy());
  await sleep(300);
  const { CgstepClient } = await import('../../src/rpc/client.js');
  const c = await CgstepClient.connect(socket);
  t.true((await c.request('status', {})).pid > 0);
  c.close();
  agent.kill('SIGTERM');
  await new Promise((r) => agent.once('exit', r));
});
