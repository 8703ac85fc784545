/** Request schema, id validation, tree names and mountinfo parsing: pure. */
import test from 'ava';
import fc from 'fast-check';
import { requestSchema } from '../../src/rpc/protocol.js';
import { parseJobName, parseStepName, parseTaskName, TreePaths } from '../../src/steps/names.js';
import { parseCgroup2Mount } from '../../src/cgroupfs/mount.js';
import { planLimits } from '../../src/steps/limits.js';
import { defaultCgroupConf } from '../../src/config/cgroupconf.js';
import { resolveSignal } from '../../src/steps/signals.js';

test('job and step ids: numbers or Slurm names, nothing that could leave the tree', (t) => {
  const ok = (job: unknown, step: unknown) => requestSchema.safeParse({ id: 1, op: 'step.create', job, step }).success;
  t.true(ok(1, 0));
  t.true(ok('4294967280', 'batch'));
  t.true(ok(12, 'extern'));
  t.true(ok(12, 'interactive'));
  for (const bad of ['', '0', '01', '../1', '1/..', 'job_1', '1e2', '4294967281', -1, 1.5, null, {}]) t.false(ok(bad, 0), String(bad));
  for (const bad of ['', '-1', '00', 'BATCH', 'batch/..', '..', 'x', 0.5]) t.false(ok(1, bad), String(bad));
});

test('property: any id the schema accepts maps to one plain path component', (t) => {
  fc.assert(
    fc.property(fc.oneof(fc.string(), fc.integer()), fc.oneof(fc.string(), fc.integer()), (job, step) => {
      const r = requestSchema.safeParse({ id: 1, op: 'step.create', job, step });
      if (!r.success || r.data.op !== 'step.create') return true;
      const p = new TreePaths('/s').step(r.data.job, r.data.step);
      return /^\/s\/job_[0-9]+\/step_([0-9]+|batch|extern|interactive)$/.test(p);
    }),
    { numRuns: 5000 },
  );
  t.pass();
});

test('names found on disk are parsed strictly', (t) => {
  t.is(parseJobName('job_12'), '12');
  t.is(parseJobName('job_012'), null);
  t.is(parseJobName('job_x'), null);
  t.is(parseStepName('step_batch'), 'batch');
  t.is(parseStepName('step_bogus'), null);
  t.is(parseStepName('step_3'), '3');
  t.is(parseTaskName('task_special'), 'special');
  t.is(parseTaskName('task_7'), 7);
  t.is(parseTaskName('task_'), null);
});

test('mountinfo: pure v2, hybrid, escaped paths, none', (t) => {
  const hybrid = '31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw\n41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n';
  t.deepEqual(parseCgroup2Mount(hybrid), { mountPoint: '/sys/fs/cgroup/unified', readOnly: false });
  t.deepEqual(parseCgroup2Mount('30 1 0:26 / /sys/fs/cgroup ro,nosuid shared:4 - cgroup2 cgroup2 rw\n'), { mountPoint: '/sys/fs/cgroup', readOnly: true });
  t.is(parseCgroup2Mount('30 1 0:26 / /mnt/my\\040cg rw - cgroup2 none rw\n')!.mountPoint, '/mnt/my cg');
  t.is(parseCgroup2Mount('1 0 0:1 / / rw - ext4 /dev/sda rw\n'), null);
});

test('limit planning: files per controller, missing controllers are errors or skipped', (t) => {
  const conf = defaultCgroupConf();
  const all = new Set(['cpuset', 'memory', 'pids', 'cpu']);
  const p = planLimits({ cpus: '0-1', memory: 64 * 1024 ** 2, pids: 16, cpuMax: '50000 100000' }, all, conf, 8 * 1024 ** 3, false);
  t.deepEqual(p.writes.map((w) => `${w.file}=${w.value}`), ['cpuset.cpus=0-1', `memory.high=${64 * 1024 ** 2}`, `memory.max=${64 * 1024 ** 2}`, 'pids.max=16', 'cpu.max=50000 100000']);
  t.throws(() => planLimits({ memory: 1 << 30 }, new Set(['hugetlb']), conf, 8 << 30, false), { message: /memory\.high needs the memory controller.*cgroup\.controllers: hugetlb/ });
  const skipped = planLimits({ memory: 1 << 30, pids: 4 }, new Set(['hugetlb']), conf, 8 << 30, true);
  t.deepEqual(skipped.writes, []);
  t.deepEqual(skipped.skipped, ['memory.high', 'memory.max', 'pids.max']);
  t.deepEqual(planLimits({ cpus: '0' }, all, { ...conf, constrainCores: false }, 1, false).writes, [], 'ConstrainCores=no');
});

test('signals by name or number', (t) => {
  t.deepEqual(resolveSignal('TERM'), { name: 'SIGTERM', number: 15 });
  t.deepEqual(resolveSignal('sigusr1'), { name: 'SIGUSR1', number: 10 });
  t.deepEqual(resolveSignal(9), { name: 'SIGKILL', number: 9 });
  t.throws(() => resolveSignal('NOPE'), { message: /unknown signal/ });
});
