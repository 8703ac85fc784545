/**
 * `cgstep status` tells the whole configuration (files read, effective
 * constrain settings, controllers needed against those present, the
 * dropped-limits mode, the device default, every gres file and whether it
 * exists), and the start-up log says it once, with a warning for each thing the
 * node cannot honour; dropped limits are never hidden from the human output.
 */
import test from 'ava';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { makeTestRoot, removeTestRoot } from '../helpers/cgroup.js';
import { startAgent } from '../helpers/agent.js';

test('status: files, settings, controllers required vs available, dropped-limits mode, device default, gres files; warnings at start', async (t) => {
  const root = makeTestRoot('status');
  t.teardown(() => removeTestRoot(root));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-status-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  execFileSync('mknod', [path.join(dir, 'nvidia0'), 'c', '195', '0']);
  execFileSync('mknod', [path.join(dir, 'nvidia1'), 'c', '195', '1']);
  const conf = path.join(dir, 'cgroup.conf');
  fs.writeFileSync(conf, 'ConstrainCores=yes\nMemorySwappiness=10\nAllowedRAMSpace=110\n');
  const gres = path.join(dir, 'gres.conf');
  fs.writeFileSync(gres, `Name=gpu File=${dir}/nvidia[0-1]\n`);
  const a = await startAgent({ root, args: ['--ignore-systemd', '--config', conf, '--gres', gres, '--ignore-missing-controllers', '--node-name', 'st1'] });
  t.teardown(() => a.stop());
  const lines = a.logLines();
  const loaded = lines.find((l) => l.msg === 'cgroup.conf loaded');
  t.is(loaded.file, conf);
  t.is(loaded.constrain.allowedRAMSpacePercent, 110);
  t.is(lines.filter((l) => /MemorySwappiness is not supported by cgstep/.test(l.msg)).length, 1, 'one warning naming the key');
  const cores = lines.filter((l) => /ConstrainCores=yes but the cpuset controller is not available/.test(l.msg ?? ''));
  t.is(cores.length, 1);
  t.is(cores[0].level, 40);
  // A gres device file that goes away after start (a driver reload) is marked in status.
  fs.rmSync(path.join(dir, 'nvidia1'));
  const s = JSON.parse(a.cli(['--json', 'status']).stdout);
  t.deepEqual(s.config.files, { cgroupConf: conf, gresConf: gres });
  t.true(s.config.constrain.cores);
  t.deepEqual(s.config.unsupportedKeys, ['MemorySwappiness']);
  t.true(s.config.controllers.required.includes('cpuset'));
  t.true(s.config.controllers.missing.includes('cpuset'));
  t.is(s.config.missingControllerLimits, 'skip');
  t.deepEqual(s.config.devicePolicy, { constrainDevices: true, default: 'open' });
  t.deepEqual(s.config.gres.map((g: any) => [g.name, g.index, path.basename(g.file), g.exists]), [['gpu', 0, 'nvidia0', true], ['gpu', 1, 'nvidia1', false]]);
  t.true(s.degraded.some((d: string) => /cpuset controller .* skipped \(NOT enforced\)/.test(d)));
  const human = a.cli(['status']).stdout;
  t.regex(human, new RegExp(`config: +cgroup.conf ${conf}; gres.conf ${gres}`));
  t.regex(human, /constrain: +ConstrainCores=yes, ConstrainRAMSpace=yes \(default\) \(AllowedRAMSpace=110%/);
  t.regex(human, /unsupported: MemorySwappiness/);
  t.regex(human, /limits need: cpuset memory \(Constrain\* settings\), pids \(--pids\), cpu \(--cpu-max, --cpu-weight\) \(limits asked for\); MISSING cpuset memory pids cpu: limits on them are skipped and NOT enforced/);
  t.regex(human, /gres: +gpu:1 .*nvidia1 \(MISSING: no such file now; device policies deny the numbers it had when last seen/);
  t.regex(human, /devices\/ebpf .*ConstrainDevices=yes \(the default: no cgroup.conf sets it\)/);
  // A limit dropped for a missing controller is said in the human output, not only in --json.
  const made = a.cli(['job', 'create', '71', '--cpus', '0']);
  t.is(made.code, 0, made.stderr);
  t.regex(made.stdout, /^job 71 created: [^\n]*\n$/, 'stdout is the result alone');
  t.regex(made.stderr, /^cgstep: WARNING: not enforced \(controller missing on this node\): cpuset.cpus/);
  t.is(a.cli(['destroy', '71']).code, 0);
});
