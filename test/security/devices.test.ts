/**
 * An allowed uid could rewrite the device policy of root's jobs (devices.set
 * lifted a `deny c 1:5`). Now device options that widen (devices.set, allow
 * rules, gres, the open policy, or any policy over one already in force) are
 * for root and operators; a user may only narrow a level its request creates.
 * The proof is the kernel's: a real open of /dev/zero and /dev/full by a
 * process of the user's in the job.
 */
import test from 'ava';
import fs from 'node:fs';
import type { RunningAgent } from '../helpers/agent.js';
import { makeTestRoot, removeTestRoot } from '../helpers/cgroup.js';
import { gate } from '../helpers/gate.js';
import { addUser, cgstepAs, removeUser, socketDir, startMultiUser, type TestUser } from '../helpers/users.js';
import { kernelSkipReason } from '../devices/helpers.js';

const skip = kernelSkipReason();
const kt = gate('BPF device control', { ok: !skip, reason: skip }, import.meta.url).test;

const ctx: { root: string; dir: string; agent: RunningAgent; alice: TestUser } = {} as any;
const ROOT: TestUser = { name: 'root', uid: 0, gid: 0 };

test.before(async () => {
  if (skip) return;
  ctx.alice = addUser('cgs_authz');
  ctx.root = makeTestRoot('sec-dev');
  ctx.dir = socketDir('sec-dev');
  ctx.agent = await startMultiUser(ctx.root, ctx.dir, ['--allow-uid', String(ctx.alice.uid)]);
});
test.after.always(async () => {
  await ctx.agent?.stop();
  if (ctx.dir) fs.rmSync(ctx.dir, { recursive: true, force: true });
  if (ctx.root) await removeTestRoot(ctx.root);
  removeUser(ctx.alice);
});

const as = (u: TestUser, args: string[]) => cgstepAs(u, ctx.agent.socket, args);
/** Exit status of `sh -c script` run by alice in task 0 of the step. */
const runIn = (job: string, step: string, script: string) => as(ctx.alice, ['run', job, step, '--', 'sh', '-c', script]);
const opens = (dev: string) => `head -c1 ${dev} > /dev/null`;

function refused(t: any, r: ReturnType<typeof as>, why: RegExp) {
  t.is(r.error?.code, 'EPERM', r.stderr || r.stdout);
  t.regex(r.error?.message ?? '', why);
}

kt("a user's devices.set on its own job is refused; root's deny c 1:5 stays in force", (t) => {
  t.is(as(ROOT, ['job', 'create', '901', '--owner', String(ctx.alice.uid), '--device-deny', 'c 1:5']).code, 0);
  refused(t, as(ctx.alice, ['devices', '901', '--device-allow', 'c 1:5']), /devices\.set needs root or an operator/);
  refused(t, as(ctx.alice, ['devices', '901', '--device-deny', 'c 1:7']), /devices\.set needs root or an operator/);
  refused(t, as(ctx.alice, ['job', 'create', '901', '--device-deny', 'c 1:7']), /job 901 exists: changing its limits or device policy needs root/);
  t.is(runIn('901', '0', opens('/dev/null')).code, 0, 'the job works');
  const zero = runIn('901', '0', opens('/dev/zero'));
  t.not(zero.code, 0, 'alice opened /dev/zero');
  t.regex(zero.stderr, /Operation not permitted/);
});

kt('allow rules, gres and the open policy are refused to a user, even on a level it creates', (t) => {
  t.is(as(ROOT, ['job', 'create', '902', '--owner', String(ctx.alice.uid)]).code, 0);
  refused(t, as(ctx.alice, ['step', 'create', '902', '0', '--device-allow', 'c 1:5']), /allow rules need root/);
  refused(t, as(ctx.alice, ['step', 'create', '902', '0', '--gres', 'gpu:0']), /gres allocations need root/);
  refused(t, as(ctx.alice, ['step', 'create', '902', '0', '--device-policy', 'open']), /the open policy needs root/);
  // task.place's jobDevices widen an existing job's allocation: root's only.
  refused(t, as(ctx.alice, ['run', '902', '2', '--gres', 'gpu:0', '--', 'true']), /gres allocations need root/);
  // Narrowing a step it creates is hers to do, and the kernel enforces it.
  t.is(as(ctx.alice, ['step', 'create', '902', '1', '--device-deny', '/dev/full', '--device-policy', 'closed']).code, 0);
  t.not(runIn('902', '1', opens('/dev/full')).code, 0, 'alice opened /dev/full');
  t.is(runIn('902', '1', opens('/dev/zero')).code, 0);
});

kt("a user cannot replace the policy root put on a step in its job (a deny-only request would lift root's)", (t) => {
  t.is(as(ROOT, ['job', 'create', '903', '--owner', String(ctx.alice.uid)]).code, 0);
  t.is(as(ROOT, ['step', 'create', '903', '0', '--device-deny', 'c 1:7']).code, 0);
  refused(t, as(ctx.alice, ['step', 'create', '903', '0', '--device-deny', 'c 1:3']), /job 903 step 0 exists: changing its limits or device policy needs root/);
  const full = runIn('903', '0', opens('/dev/full'));
  t.not(full.code, 0, 'alice opened /dev/full');
  t.regex(full.stderr, /Operation not permitted/);
});
