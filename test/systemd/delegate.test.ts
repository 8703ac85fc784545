/**
 * src/systemd/delegate under a real systemd 252: a Delegate=yes service
 * (systemd-run --user -p Delegate=yes) cannot enable controllers for its
 * children while it sits in its own unit cgroup (EBUSY); after
 * moveSelfIntoSubgroup it can, and `daemon-reload` and `reset-failed` leave the
 * delegated subtree (subtree_control, agent/, payload/ and their processes)
 * exactly as they were. Also: not applicable outside a service.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { moveSelfIntoSubgroup } from '../../src/systemd/delegate.js';
import { ownCgroup } from '../../src/cgroupfs/index.js';
import { captureLog, readProcs, sandboxSuite, until } from './helpers.js';

const FIXTURE = path.resolve('test/systemd/fixtures/agent-fixture.ts');
const { test: sbTest, sandbox: sb } = sandboxSuite('delegate', import.meta.url);

/** Everything under dir: each cgroup's relative path, subtree_control and pids. */
function snapshot(dir: string): Record<string, { subtree: string; procs: number[] }> {
  const out: Record<string, { subtree: string; procs: number[] }> = {};
  const walk = (d: string) => {
    out[path.relative(dir, d) || '.'] = { subtree: fs.readFileSync(path.join(d, 'cgroup.subtree_control'), 'utf8').trim(), procs: readProcs(d).sort() };
    for (const e of fs.readdirSync(d, { withFileTypes: true })) if (e.isDirectory()) walk(path.join(d, e.name));
  };
  walk(dir);
  return out;
}

sbTest('outside a service there is nothing to do', async (t) => {
  const cap = captureLog();
  t.false((ownCgroup() ?? '').endsWith('.service') && !!process.env.INVOCATION_ID, 'the test runner is not itself a systemd service');
  t.is(await moveSelfIntoSubgroup('/sys/fs/cgroup/unified', cap.log), null);
});

sbTest('Delegate=yes service: moves itself into agent/, can then enable controllers, and daemon-reload/reset-failed leave the subtree intact', async (t) => {
  // Make a controller (the only one these machines have on cgroup2) reachable
  // from the unit's cgroup: systemd 252 does not manage hugetlb, so enable it
  // top-down by hand, as CgroupAutomount would.
  fs.writeFileSync(path.join(sb().cgroupDir, 'cgroup.subtree_control'), '+hugetlb');
  fs.writeFileSync(path.join(sb().cgroupDir, 'app.slice', 'cgroup.subtree_control'), '+hugetlb');

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-deleg-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const state = path.join(dir, 'state.json');
  const unit = 'cgstepd-deleg.service';
  const r = await sb().exec([
    'systemd-run', '--user', `--unit=${unit}`, '--same-dir', '-p', 'Delegate=yes', '-p', 'Type=notify',
    '--', process.execPath, '--import', 'tsx', FIXTURE, state, '--payload', '--child-before-move',
  ]);
  t.is(r.code, 0, `${r.stderr}\n${sb().logTail()}`);
  const rec = JSON.parse(fs.readFileSync(state, 'utf8'));
  t.log(JSON.stringify(rec));
  t.falsy(rec.error, rec.error);
  t.is(rec.before, `/app.slice/${unit}`);
  // systemd 252's user manager writes no xattrs, so the INVOCATION_ID fallback decides here.
  t.is(rec.evidence, 'invocation-id');
  t.is(rec.enableBefore, 'EBUSY', 'the agent in its own unit cgroup blocks controllers for children');
  t.is(rec.moved, '/sys/fs/cgroup' + `/app.slice/${unit}/agent`);
  t.is(rec.after, `/app.slice/${unit}/agent`);
  t.is(rec.enableAfter, 'ok');
  t.deepEqual(rec.leftInUnit, [], 'a child started before the move followed the agent');

  const unitDir = sb().hostPath(`/app.slice/${unit}`);
  const before = snapshot(unitDir);
  t.deepEqual(before['.'], { subtree: 'hugetlb', procs: [] });
  t.true(before.agent.procs.includes(rec.pid) && before.agent.procs.includes(rec.earlyChildPid), JSON.stringify(before.agent));
  t.deepEqual(before.payload.procs, [rec.payloadPid]);
  const ancestors = () => [sb().cgroupDir, path.join(sb().cgroupDir, 'app.slice')].map((d) => fs.readFileSync(path.join(d, 'cgroup.subtree_control'), 'utf8').trim());

  for (const cmd of [['daemon-reload'], ['reset-failed'], ['daemon-reload']]) {
    const res = await sb().systemctl(...cmd);
    t.is(res.code, 0, `${cmd.join(' ')}: ${res.stderr}`);
    t.deepEqual(snapshot(unitDir), before, `subtree unchanged after ${cmd.join(' ')}`);
    t.deepEqual(ancestors(), ['hugetlb', 'hugetlb']);
  }
  const show = await sb().systemctl('show', '-p', 'ActiveState', '-p', 'MainPID', '-p', 'Delegate', unit);
  t.regex(show.stdout, /^ActiveState=active$/m);
  t.regex(show.stdout, new RegExp(`^MainPID=${rec.pid}$`, 'm'));
  t.regex(show.stdout, /^Delegate=yes$/m);
  const status = await sb().systemctl('status', unit);
  t.log(status.stdout);
  t.regex(status.stdout, new RegExp(`agent\\n.*${rec.pid} `));

  // Stopping the service takes its whole subtree with it (payload included), cleanly.
  const stop = await sb().systemctl('stop', unit);
  t.is(stop.code, 0, stop.stderr);
  await until(() => !fs.existsSync(unitDir), 5000, `${unitDir} to be removed`);
});
