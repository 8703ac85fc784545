/**
 * gres.conf as a real cgstepd reads it at start-up: a gres.conf that gives
 * this node no device (lines only for other NodeNames, or no File=) is logged
 * and listed as degraded in `cgstep status`.
 * Each test makes its own cgroup root, temp dir and fake device nodes (mknod)
 * and removes them; agents are stopped by pid.
 */
import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { makeTestRoot, removeTestRoot } from '../helpers/cgroup.js';
import { startAgent } from '../helpers/agent.js';
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
