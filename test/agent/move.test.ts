/**
 * Moves checked by the cgroup.procs write's own result: every way the kernel
 * refuses a move still comes back as a typed error naming the pid or the path,
 * and the optional read-back of /proc/PID/cgroup agrees with a good move.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { cgroupOfPid, moveProcess } from '../../src/cgroupfs/ops.js';
import { AgentError, KernelError } from '../../src/errors.js';
import { MOUNT, makeTestRoot, removeTestRoot } from '../helpers/cgroup.js';
import { killPid, spawnSleeper } from '../helpers/agent.js';

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
  moveProcess(a, p.pid!, MOUNT);
  t.is(cgroupOfPid(p.pid!), '/' + path.relative(MOUNT, a));
  moveProcess(b, p.pid!, MOUNT, true);
  t.is(cgroupOfPid(p.pid!), '/' + path.relative(MOUNT, b));
});

test.serial('a pid that does not exist is ENOENT "no process"', async (t) => {
  const a = cgroup('gone');
  const p = spawnSleeper();
  const pid = p.pid!;
  p.kill('SIGKILL');
  await new Promise((r) => p.once('exit', r));
  const err = t.throws(() => moveProcess(a, pid, MOUNT), { instanceOf: AgentError });
  t.is(err!.code, 'ENOENT');
  t.is(err!.message, `no process ${pid}`);
});

test.serial('a kernel thread is refused by the kernel: a KernelError with its errno and the file', (t) => {
  const a = cgroup('kthread');
  const err = t.throws(() => moveProcess(a, 2, MOUNT), { instanceOf: KernelError }) as KernelError;
  t.is(err.errno, 'EINVAL');
  t.true(err.message.includes(path.join(a, 'cgroup.procs')), err.message);
});

test.serial('a directory that is gone is a KernelError ENOENT on its cgroup.procs', (t) => {
  const a = cgroup('removed');
  fs.rmdirSync(a);
  const p = spawnSleeper();
  t.teardown(() => killPid(p.pid));
  const err = t.throws(() => moveProcess(a, p.pid!, MOUNT), { instanceOf: KernelError }) as KernelError;
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
  moveProcess(home, p.pid!, MOUNT);
  const err = t.throws(() => moveProcess(outer, p.pid!, MOUNT), { instanceOf: KernelError }) as KernelError;
  t.is(err.errno, 'EBUSY');
  t.is(cgroupOfPid(p.pid!), '/' + path.relative(MOUNT, home));
});
