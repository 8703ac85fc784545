/**
 * Controllers on the real kernel. hugetlb is the one controller this machine
 * has on cgroup2, so enabling top-down and the "missing controller" paths are
 * proven with it; the VM lane proves the others.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { enableTopDown, controllersOf, enabledIn } from '../../src/cgroupfs/index.js';
import { MOUNT, makeTestRoot, removeTestRoot } from '../helpers/cgroup.js';
import { startAgent } from '../helpers/agent.js';

test('enableTopDown enables on every level and reports what the kernel lacks', async (t) => {
  const root = makeTestRoot('ctl');
  t.teardown(() => removeTestRoot(root));
  const deep = path.join(root, 'a', 'b');
  fs.mkdirSync(deep, { recursive: true });
  const r = enableTopDown(root, deep, ['hugetlb', 'memory']);
  t.deepEqual(r.enabled, ['hugetlb']);
  t.deepEqual(r.missing, ['memory']);
  for (const d of [root, path.join(root, 'a'), deep]) t.true(enabledIn(d).includes('hugetlb'), d);
  fs.mkdirSync(path.join(deep, 'leaf'));
  t.true(controllersOf(path.join(deep, 'leaf')).includes('hugetlb'));
});

test('a limit whose controller is missing is refused with ENOTSUP naming it, or skipped on request', async (t) => {
  const root = makeTestRoot('ctl2');
  t.teardown(() => removeTestRoot(root));
  const a = await startAgent({ root, args: ['--ignore-systemd'] });
  t.teardown(() => a.stop());
  const r = a.cli(['step', 'create', '5', '0', '--memory', '64M']);
  t.is(r.code, 1);
  t.regex(r.stderr, /ENOTSUP: memory\.high needs the memory controller/);
  await a.stop();
  const b = await startAgent({ root, args: ['--ignore-systemd', '--ignore-missing-controllers'] });
  t.teardown(() => b.stop());
  const ok = b.cli(['--json', 'step', 'create', '5', '0', '--memory', '64M', '--pids', '10']);
  t.is(ok.code, 0, ok.stderr);
  t.deepEqual(JSON.parse(ok.stdout).skipped, ['memory.high', 'memory.max', 'pids.max']);
});

test('the agent refuses a --cgroup-root that is not on cgroup2 or not there: exit 2, saying where the mount is', async (t) => {
  const a = await startAgent({ root: '/tmp', args: ['--ignore-systemd'], expectExit: true });
  t.regex(a.log(), new RegExp(`cgstepd: --cgroup-root /tmp is not on a cgroup2 filesystem; give a directory under the cgroup2 mount \\(here ${MOUNT}\\)`));
  t.is(a.proc.exitCode, 2);
  const b = await startAgent({ root: '/nonexistent-cgstep-root', args: ['--ignore-systemd'], expectExit: true });
  t.regex(b.log(), /cgstepd: --cgroup-root \/nonexistent-cgstep-root: stat \/nonexistent-cgstep-root: ENOENT/);
  t.is(b.proc.exitCode, 2);
});
