/**
 * gres.conf as a real cgstepd reads it at start-up: a File= that does not
 * exist is waited for (--gres-wait) and then stops the agent before anything
 * is made, as slurmd stops; one that appears during the wait is denied to the
 * first job. A device node that goes away while the agent runs (a driver
 * reload) is still denied, by the numbers it had, and when it is back by the
 * numbers it has then. A gres.conf that gives this node no device (lines only for other
 * NodeNames, or no File=) is logged and listed as degraded in `cgstep status`.
 * Each test makes its own cgroup root, temp dir and fake device nodes (mknod)
 * and removes them; agents are stopped by pid.
 */
import test from 'ava';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { makeTestRoot, removeTestRoot } from '../helpers/cgroup.js';
import { sleep, startAgent } from '../helpers/agent.js';
import { gate } from '../helpers/gate.js';
import { kernelSkipReason } from '../devices/helpers.js';

const skip = kernelSkipReason();
const kt = gate('BPF device control', { ok: !skip, reason: skip }, import.meta.url).test;

/** A cgroup root and a temp dir for one test, removed after it. */
function scratch(t: { teardown: (f: () => unknown) => void }, name: string): { root: string; dir: string } {
  const root = makeTestRoot(name);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `cgstep-${name}-`));
  t.teardown(async () => {
    await removeTestRoot(root);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { root, dir };
}

kt('gres.conf lines all for another NodeName: a warning naming both names, and a degraded entry saying every device is open', async (t) => {
  const { root, dir } = scratch(t, 'gresother');
  const gres = path.join(dir, 'gres.conf');
  fs.writeFileSync(gres, `NodeName=node1 Name=gpu File=${dir}/nvidia[0-1]\n`);
  const a = await startAgent({ root, args: ['--ignore-systemd', '--gres', gres, '--node-name', 'gn1'] });
  t.teardown(() => a.stop());
  const warned = a.logLines().filter((l) => l.level === 40 && /every device line .* is for another node/.test(l.msg));
  t.is(warned.length, 1);
  t.is(warned[0].nodeName, 'gn1');
  t.deepEqual(warned[0].nodeNamesSeen, ['node1']);
  const s = JSON.parse(a.cli(['--json', 'status']).stdout);
  const d = s.degraded.filter((x: string) => x.startsWith(gres));
  t.is(d.length, 1, JSON.stringify(s.degraded));
  t.regex(d[0], /\(NodeName=node1\) and none for gn1, the node name this agent uses \(--node-name; by default the short host name\): no gres device is denied, so every device is open to every job/);
  t.regex(a.cli(['status']).stdout, /degraded: +\S*gres.conf: every device line/);
});

kt('gres.conf with AutoDetect= and Count= only: a degraded entry saying no File= is known; closed mode says what it still confines', async (t) => {
  const { root, dir } = scratch(t, 'gresauto');
  const gres = path.join(dir, 'gres.conf');
  fs.writeFileSync(gres, 'AutoDetect=nvml\nName=gpu Count=2\n');
  const a = await startAgent({ root, args: ['--ignore-systemd', '--gres', gres, '--node-name', 'gn2', '--device-policy', 'closed'] });
  t.teardown(() => a.stop());
  const s = JSON.parse(a.cli(['--json', 'status']).stdout);
  const d = s.degraded.filter((x: string) => x.startsWith(gres));
  t.deepEqual(d, [`${gres}: no File= is known for gn2 (only AutoDetect=nvml, Name=gpu): cgstep knows gres devices only from File= and MultipleFiles=: no gres can be allocated by name; jobs get the closed policy (--device-policy closed) without any gres device`]);
});

kt('a File= that does not exist: the agent waits --gres-wait for it, then refuses to start (FILE:LINE, exit 2) with nothing made', async (t) => {
  const { root, dir } = scratch(t, 'gresmissing');
  execFileSync('mknod', ['-m', '0600', path.join(dir, 'nvidia0'), 'c', '195', '0']);
  const gres = path.join(dir, 'gres.conf');
  fs.writeFileSync(gres, `# GPUs\nName=gpu File=${dir}/nvidia[0-2]\n`);
  const t0 = Date.now();
  const a = await startAgent({ root, args: ['--ignore-systemd', '--gres', gres, '--gres-wait', '600'], expectExit: true });
  t.true(Date.now() - t0 >= 600, 'it waited');
  t.is(a.proc.exitCode, 2, a.log());
  const stderr = a.log().split('\n').filter((l) => l.startsWith('cgstepd: '));
  t.deepEqual(stderr, [
    `cgstepd: ${gres}:2: File= ${dir}/nvidia1, ${gres}:2: File= ${dir}/nvidia2: no such device file (waited 0.6 s for them, as slurmd does); make the device nodes (load the driver) or correct File= in gres.conf; --gres-wait (CGSTEP_GRES_WAIT) sets how long start-up waits for them`,
  ]);
  t.is(a.logLines().filter((l) => l.msg === 'waiting for a gres device file that does not exist yet').length, 2, 'one warning per file');
  t.deepEqual(fs.readdirSync(root, { withFileTypes: true }).filter((e) => e.isDirectory()), [], 'no scope, no infinity process');
  // Not a device node: refused at once, whatever the wait.
  fs.writeFileSync(path.join(dir, 'nvidia1'), 'a plain file');
  fs.writeFileSync(gres, `Name=gpu File=${dir}/nvidia[0-1]\n`);
  const b = await startAgent({ root, args: ['--ignore-systemd', '--gres', gres, '--gres-wait', '60000'], expectExit: true });
  t.is(b.proc.exitCode, 2);
  t.regex(b.log(), new RegExp(`cgstepd: ${gres}:1: File= ${dir}/nvidia1 is not a character or block device; make the device nodes`));
  t.deepEqual(fs.readdirSync(root, { withFileTypes: true }).filter((e) => e.isDirectory()), []);
});

kt('a File= that appears while the agent waits: it starts, and the first job denies that device', async (t) => {
  const { root, dir } = scratch(t, 'greslate');
  execFileSync('mknod', ['-m', '0600', path.join(dir, 'nvidia0'), 'c', '195', '0']);
  const gres = path.join(dir, 'gres.conf');
  fs.writeFileSync(gres, `Name=gpu File=${dir}/nvidia[0-1]\n`);
  const late = setTimeout(() => execFileSync('mknod', ['-m', '0600', path.join(dir, 'nvidia1'), 'c', '195', '1']), 700);
  t.teardown(() => clearTimeout(late));
  const a = await startAgent({ root, args: ['--ignore-systemd', '--gres', gres, '--gres-wait', '30000'] });
  t.teardown(() => a.stop());
  const lines = a.logLines();
  t.truthy(lines.find((l) => l.msg === 'waiting for a gres device file that does not exist yet' && l.path === `${dir}/nvidia1`));
  t.truthy(lines.find((l) => l.msg === 'gres device file now exists' && l.origin === `${gres}:1`));
  const c = await a.client();
  t.teardown(() => c.close());
  await c.request('job.create', { job: '61' });
  const st = await c.request('stats', { job: '61' });
  t.deepEqual([...st.devices.rules].sort(), ['c 195:0 -', 'c 195:1 -']);
  await c.request('destroy', { job: '61', force: true });
});

kt('a gres device node removed while the agent runs is denied by the numbers it had; made again, by its new numbers on the next job', async (t) => {
  const { root, dir } = scratch(t, 'gresreload');
  for (const i of [0, 1]) execFileSync('mknod', ['-m', '0600', path.join(dir, `nvidia${i}`), 'c', '195', String(i)]);
  const gres = path.join(dir, 'gres.conf');
  fs.writeFileSync(gres, `Name=gpu File=${dir}/nvidia[0-1]\n`);
  const a = await startAgent({ root, args: ['--ignore-systemd', '--gres', gres] });
  t.teardown(() => a.stop());
  const c = await a.client();
  t.teardown(() => c.close());
  const denied = async (job: string) => {
    await c.request('job.create', { job });
    const rules = (await c.request('stats', { job })).devices.rules as string[];
    await c.request('destroy', { job, force: true });
    return [...rules].sort();
  };
  fs.rmSync(path.join(dir, 'nvidia1'));
  t.regex(a.cli(['status']).stdout, /gres: +gpu:1 \S+nvidia1 \(MISSING: no such file now; device policies deny the numbers it had when last seen, and are refused if it was never seen\)/);
  t.deepEqual(await denied('71'), ['c 195:0 -', 'c 195:1 -']);
  // Past the cache's age (10 s) the next job starts a new reading, which finds nvidia1 gone.
  await sleep(10500);
  t.deepEqual(await denied('72'), ['c 195:0 -', 'c 195:1 -']);
  t.deepEqual(await denied('73'), ['c 195:0 -', 'c 195:1 -'], 'gone: denied by the numbers it had');
  t.truthy(a.logLines().find((l) => l.level === 40 && l.msg === 'gres device not found; denied by the numbers it had when last seen' && l.denied === 'c 195:1'));
  execFileSync('mknod', ['-m', '0600', path.join(dir, 'nvidia1'), 'c', '195', '5']);
  t.deepEqual(await denied('74'), ['c 195:0 -', 'c 195:5 -'], 'back with other numbers: the first job after denies them');
  t.notRegex(a.cli(['status']).stdout, /gres:.*MISSING/);
});
