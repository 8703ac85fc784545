/**
 * Moves checked by the cgroup.procs write's own result: every way the kernel
 * refuses a move still comes back as a typed error naming the pid or the path,
 * and the optional read-back of /proc/PID/cgroup agrees with a good move.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { writeText } from '../../src/cgroupfs/files.js';
import { cgroupOfPid, moveProcess } from '../../src/cgroupfs/ops.js';
import { AgentError, KernelError } from '../../src/errors.js';
import { checkMoved, isRunning, statOf } from '../../src/proc/index.js';
import { MOUNT, makeTestRoot, removeTestRoot } from '../helpers/cgroup.js';
import { killPid, spawnSleeper, startAgent, waitFor } from '../helpers/agent.js';

const ctx: { root: string } = {} as any;
test.before(() => (ctx.root = makeTestRoot('move')));
test.after.always(() => removeTestRoot(ctx.root));

function cgroup(name: string): string {
  const d = path.join(ctx.root, name);
  fs.mkdirSync(d);
  return d;
}

test.serial('a good move lands, with and without the read-back', (t) => {
  const a = cgroup('a');
  const b = cgroup('b');
  const p = spawnSleeper();
  t.teardown(() => killPid(p.pid));
  moveProcess(a, p.pid!);
  t.is(cgroupOfPid(p.pid!), '/' + path.relative(MOUNT, a));
  moveProcess(b, p.pid!);
  checkMoved(p.pid!, b, MOUNT);
  t.is(cgroupOfPid(p.pid!), '/' + path.relative(MOUNT, b));
});

test.serial('a pid that does not exist is ENOENT "no process"', async (t) => {
  const a = cgroup('gone');
  const p = spawnSleeper();
  const pid = p.pid!;
  p.kill('SIGKILL');
  await new Promise((r) => p.once('exit', r));
  const err = t.throws(() => moveProcess(a, pid), { instanceOf: AgentError });
  t.is(err!.code, 'ENOENT');
  t.is(err!.message, `no process ${pid}`);
});

test.serial('a kernel thread is refused by the kernel: a KernelError with its errno and the file', (t) => {
  const a = cgroup('kthread');
  const err = t.throws(() => moveProcess(a, 2), { instanceOf: KernelError }) as KernelError;
  t.is(err.errno, 'EINVAL');
  t.true(err.message.includes(path.join(a, 'cgroup.procs')), err.message);
});

test.serial('a directory that is gone is a KernelError ENOENT on its cgroup.procs', (t) => {
  const a = cgroup('removed');
  fs.rmdirSync(a);
  const p = spawnSleeper();
  t.teardown(() => killPid(p.pid));
  const err = t.throws(() => moveProcess(a, p.pid!), { instanceOf: KernelError }) as KernelError;
  t.is(err.errno, 'ENOENT');
  t.true(err.message.includes(a));
});

test.serial('an inner directory (a controller enabled below it) refuses the process: EBUSY, and the process stays where it was', (t) => {
  const have = fs.readFileSync(path.join(ctx.root, 'cgroup.controllers'), 'utf8').trim().split(/\s+/).filter(Boolean);
  if (have.length === 0) return t.pass('no controller on this mount to make an inner directory with');
  fs.writeFileSync(path.join(ctx.root, 'cgroup.subtree_control'), `+${have[0]}`);
  const outer = cgroup('outer');
  fs.mkdirSync(path.join(outer, 'leaf'));
  fs.writeFileSync(path.join(outer, 'cgroup.subtree_control'), `+${have[0]}`);
  const home = cgroup('home');
  const p = spawnSleeper();
  t.teardown(() => killPid(p.pid));
  moveProcess(home, p.pid!);
  const err = t.throws(() => moveProcess(outer, p.pid!), { instanceOf: KernelError }) as KernelError;
  t.is(err.errno, 'EBUSY');
  t.is(cgroupOfPid(p.pid!), '/' + path.relative(MOUNT, home));
});

test.serial("the read-back (checkMoved): EIO naming what /proc says when the process is elsewhere, ENOENT when it has exited", async (t) => {
  const a = cgroup('check-a');
  const b = cgroup('check-b');
  // A zombie: the short sleep's parent execs into the long one, which never waits for it.
  const sh = spawn('sh', ['-c', 'sleep 0.2 & echo $!; exec sleep 600'], { stdio: ['ignore', 'pipe', 'ignore'] });
  t.teardown(() => killPid(sh.pid));
  const zombie = Number(await new Promise<string>((r) => sh.stdout!.once('data', (d) => r(String(d)))));
  moveProcess(a, sh.pid!);
  const eio = t.throws(() => checkMoved(sh.pid!, b, MOUNT), { instanceOf: AgentError });
  t.is(eio!.code, 'EIO');
  t.true(eio!.message.includes(`says /${path.relative(MOUNT, a)}`), eio!.message);
  t.notThrows(() => checkMoved(sh.pid!, a, MOUNT));
  await waitFor(() => statOf(zombie)?.state === 'Z', 5000, `the zombie ${zombie} ${JSON.stringify(statOf(zombie))}`);
  t.is(t.throws(() => checkMoved(zombie, b, MOUNT), { instanceOf: AgentError })!.code, 'ENOENT');
  t.false(isRunning(zombie));
  t.true(isRunning(sh.pid!));
  t.is(t.throws(() => checkMoved(0x3ffffff, b, MOUNT), { instanceOf: AgentError })!.code, 'ENOENT');
});

test.serial('an agent run with --verify-moves places a task and reads it back', async (t) => {
  const root = makeTestRoot('verify');
  const agent = await startAgent({ root, args: ['--ignore-systemd', '--verify-moves'] });
  const p = spawnSleeper();
  t.teardown(async () => {
    killPid(p.pid);
    await agent.stop();
    await removeTestRoot(root);
  });
  const c = await agent.client();
  t.teardown(() => c.close());
  const r = await c.request('task.place', { job: 5, step: 0, pid: p.pid!, task: 0 });
  t.true(r.job.created);
  t.true(cgroupOfPid(p.pid!)!.endsWith('/job_5/step_0/user/task_0'));
  await c.request('destroy', { job: 5, force: true });
});

test.serial('a write to an interface file that is not there is ENOENT, and makes no file', (t) => {
  const a = cgroup('nofile');
  const missing = path.join(a, 'cgstep.no-such-file');
  const err = t.throws(() => writeText(missing, '1'), { instanceOf: KernelError }) as KernelError;
  t.is(err.errno, 'ENOENT');
  t.false(fs.existsSync(missing));
  // Off cgroupfs too: a wrong path is never turned into a regular file.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-nofile-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  t.is((t.throws(() => writeText(path.join(dir, 'cgroup.procs'), '1'), { instanceOf: KernelError }) as KernelError).errno, 'ENOENT');
  t.deepEqual(fs.readdirSync(dir), []);
});
