/**
 * Orphan collection at start: stray directories removed when empty and
 * reported (never killed) when not; extra infinity processes ended.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { makeTestRoot, removeTestRoot } from '../helpers/cgroup.js';
import { killPid, spawnSleeper, startAgent, waitFor } from '../helpers/agent.js';
import { INFINITY_BIN } from '../../src/scope/infinity.js';

test('orphans: empty strays removed, populated ones reported, a second infinity process ended', async (t) => {
  const root = makeTestRoot('orphans');
  const p = spawnSleeper();
  t.teardown(async () => {
    killPid(p.pid);
    await removeTestRoot(root);
  });
  let a = await startAgent({ root, args: ['--ignore-systemd'] });
  t.is(a.cli(['step', 'create', '5', '0']).code, 0);
  const st = JSON.parse(a.cli(['--json', 'status']).stdout);
  await a.stop();
  const scope = st.scope;
  // What a crash (or a hand) may leave behind.
  fs.mkdirSync(path.join(scope, 'junk'));
  fs.mkdirSync(path.join(scope, 'job_5', 'step_0', 'user', 'weird'));
  fs.mkdirSync(path.join(scope, 'job_5', 'step_0', 'stray'));
  fs.writeFileSync(path.join(scope, 'job_5', 'step_0', 'stray', 'cgroup.procs'), String(p.pid));
  const extra = spawn(INFINITY_BIN, [], { stdio: 'ignore', detached: true });
  await new Promise((r) => extra.once('spawn', r));
  t.teardown(() => killPid(extra.pid));
  fs.writeFileSync(path.join(scope, 'system', 'cgroup.procs'), String(extra.pid));
  const exited = new Promise((r) => extra.once('exit', r));

  a = await startAgent({ root, args: ['--ignore-systemd'] });
  t.teardown(() => a.stop());
  await exited;
  t.false(fs.existsSync(path.join(scope, 'junk')));
  t.false(fs.existsSync(path.join(scope, 'job_5', 'step_0', 'user', 'weird')));
  t.true(fs.existsSync(path.join(scope, 'job_5', 'step_0', 'stray')), 'a populated orphan is not removed');
  t.is(p.exitCode, null, 'and its process is not killed');
  const s = JSON.parse(a.cli(['--json', 'status']).stdout);
  t.is(s.infinityPid, st.infinityPid, 'the original infinity process is kept');
  t.deepEqual(s.orphans.populated, [path.join(scope, 'job_5', 'step_0', 'stray')]);
  t.true(s.degraded.some((d: string) => /1 orphan cgroup\(s\) still hold processes/.test(d)));
  await waitFor(() => /orphans cleaned up/.test(a.log()), 2000, 'log line');
  t.regex(a.log(), /"extraInfinity":\[\d+\]/);
});
