/**
 * Two agents on one cgroup root (different sockets) would create and remove
 * the same directories behind each other's back: the second one must exit
 * before touching anything, naming the root and the first one's pid; once the
 * first is gone (stopped or killed), the root is free again.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { makeTestRoot, removeTestRoot } from '../helpers/cgroup.js';
import { startAgent } from '../helpers/agent.js';

test('a second agent on the same cgroup root exits naming the root and the holder', async (t) => {
  const root = makeTestRoot('lock');
  t.teardown(() => removeTestRoot(root));
  const first = await startAgent({ root, args: ['--ignore-systemd'] });
  t.teardown(() => first.stop());
  const before = fs.readdirSync(root).sort();
  const second = await startAgent({ root, args: ['--ignore-systemd'], expectExit: true });
  t.is(second.proc.exitCode, 1);
  t.regex(second.log(), new RegExp(`another cgstepd \\(pid ${first.pid}\\) already manages the cgroup root ${root}`));
  t.deepEqual(fs.readdirSync(root).sort(), before, 'the second agent touched the root');
  const c = await first.client();
  t.teardown(() => c.close());
  t.is((await c.request('status', {})).pid, first.pid, 'the first agent is unharmed');
});

test('the lock goes with its holder: after a SIGKILL a new agent takes the root', async (t) => {
  const root = makeTestRoot('lock2');
  t.teardown(() => removeTestRoot(root));
  const first = await startAgent({ root, args: ['--ignore-systemd'] });
  t.is(await first.stop('SIGKILL'), null);
  fs.rmSync(path.dirname(first.socket), { recursive: true, force: true });
  const next = await startAgent({ root, args: ['--ignore-systemd'] });
  t.teardown(() => next.stop());
  const c = await next.client();
  t.teardown(() => c.close());
  t.is((await c.request('status', {})).pid, next.pid);
});
