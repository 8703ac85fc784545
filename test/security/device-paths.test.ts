/**
 * Device rule paths were a root stat() oracle: uid 1000 learned whether
 * /root/.bashrc exists from the error text. A user may now name device paths
 * under /dev only; anything else is refused before it is looked at, with the
 * same words whether the file exists or not, and a path under /dev that leads
 * elsewhere (a symlink in /dev/shm) fails with the same words too.
 */
import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { RunningAgent } from '../helpers/agent.js';
import { makeTestRoot, removeTestRoot } from '../helpers/cgroup.js';
import { addUser, cgstepAs, removeUser, requestsAs, socketDir, startMultiUser, type TestUser } from '../helpers/users.js';

const ctx: { root: string; dir: string; secret: string; links: string[]; agent: RunningAgent; alice: TestUser } = { links: [] } as any;

test.before(async () => {
  ctx.alice = addUser('cgs_authz');
  ctx.root = makeTestRoot('sec-paths');
  ctx.dir = socketDir('sec-paths');
  // A directory only root may look into, with one file in it.
  ctx.secret = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-secret-'));
  fs.chmodSync(ctx.secret, 0o700);
  fs.writeFileSync(path.join(ctx.secret, 'exists'), 'x');
  ctx.agent = await startMultiUser(ctx.root, ctx.dir, ['--allow-uid', String(ctx.alice.uid)]);
  if (cgstepAs(ctx.alice, ctx.agent.socket, ['job', 'create', '951']).code !== 0) throw new Error('alice cannot create her job');
});
test.after.always(async () => {
  await ctx.agent?.stop();
  for (const l of ctx.links) fs.rmSync(l, { recursive: true, force: true });
  fs.rmSync(ctx.dir, { recursive: true, force: true });
  fs.rmSync(ctx.secret, { recursive: true, force: true });
  await removeTestRoot(ctx.root);
  removeUser(ctx.alice);
});

/** alice's errors for steps whose deny rule names each path; the path itself is replaced by P. */
function denyErrors(step: number, paths: string[]): { code?: string; message: string }[] {
  const out = requestsAs(ctx.alice, ctx.agent.socket, paths.map((p) => ['step.create', { job: 951, step, devices: { deny: [`${p} rw`] } }]));
  return out.map((o, i) => ({ code: o.error?.code, message: (o.error?.message ?? 'accepted').split(paths[i]).join('P') }));
}

test('a path outside /dev is refused with the same message whether or not the file exists', (t) => {
  // The last: ".." cannot lead out of /dev.
  const [there, absent, bashrc, dotdot] = denyErrors(1, [path.join(ctx.secret, 'exists'), path.join(ctx.secret, 'absent'), '/root/.bashrc', `/dev/../${ctx.secret}/exists`]);
  t.is(there.code, 'EPERM');
  t.regex(there.message, /may name device paths under \/dev only/);
  t.deepEqual(there, absent);
  t.deepEqual(bashrc, absent);
  t.deepEqual(dotdot, absent);
});

test('a symlink under /dev that leads elsewhere fails with the same message whether or not its target exists', (t) => {
  const shm = fs.mkdtempSync('/dev/shm/cgstep-paths-');
  ctx.links.push(shm);
  fs.symlinkSync(path.join(ctx.secret, 'exists'), path.join(shm, 'a'));
  fs.symlinkSync(path.join(ctx.secret, 'absent'), path.join(shm, 'b'));
  const [a, b, none] = denyErrors(2, [path.join(shm, 'a'), path.join(shm, 'b'), '/dev/cgstep-no-such-node']);
  t.is(a.code, 'EINVAL');
  t.regex(a.message, /no device node at P/);
  t.deepEqual(a, b);
  t.deepEqual(none, a);
});

test('a device path under /dev works for a user, any path for root', async (t) => {
  const r = cgstepAs(ctx.alice, ctx.agent.socket, ['step', 'create', '951', '3', '--device-deny', '/dev/full rw']);
  t.is(r.code, 0, r.stderr);
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  const e: any = await t.throwsAsync(c.request('step.create', { job: 951, step: 4, devices: { deny: [`${ctx.secret}/exists`] } }));
  t.is(e.code, 'EINVAL');
  t.regex(e.message, /is not a character or block device/);
});
