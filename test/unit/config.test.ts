/** cgroup.conf parsing, Slurm's memory formulas, sizes: pure functions. */
import test from 'ava';
import { parseCgroupConf, defaultCgroupConf } from '../../src/config/cgroupconf.js';
import { memoryLimits, memoryLimitBytes, memswLimitBytes } from '../../src/config/memory.js';
import { parseSize, formatSize } from '../../src/config/size.js';

const G = 1024 ** 3;
const M = 1024 ** 2;

test('cgroup.conf: case-insensitive keys, comments, yes/no, percents', (t) => {
  const { conf, warnings } = parseCgroupConf(
    ['# comment', 'CgroupMountPoint=/sys/fs/cgroup', 'ignoresystemd=YES', 'IgnoreSystemdOnFailure=no', 'ConstrainRAMSpace=yes', 'AllowedRAMSpace=110.5', 'MaxRAMPercent=90%', 'MinRAMSpace=64', 'ConstrainSwapSpace=yes  # trailing', 'AllowedSwapSpace=20', 'SystemdTimeout=3000', 'CgroupPlugin=cgroup/v2', 'Frobnicate=1', ''].join('\n'),
  );
  t.is(conf.cgroupMountPoint, '/sys/fs/cgroup');
  t.true(conf.ignoreSystemd);
  t.false(conf.ignoreSystemdOnFailure);
  t.is(conf.allowedRAMSpace, 110.5);
  t.is(conf.maxRAMPercent, 90);
  t.is(conf.minRAMSpace, 64);
  t.true(conf.constrainSwapSpace);
  t.is(conf.allowedSwapSpace, 20);
  t.is(conf.systemdTimeout, 3000);
  t.true(conf.explicit.has('constrainramspace'));
  t.deepEqual(warnings, ['cgroup.conf:13: unknown key Frobnicate ignored']);
});

test('cgroup.conf: bad values are errors naming the line', (t) => {
  t.throws(() => parseCgroupConf('ConstrainCores=maybe', 'x.conf'), { message: /x\.conf:1: ConstrainCores=maybe: expected yes or no/ });
  t.throws(() => parseCgroupConf('\nAllowedRAMSpace=-3'), { message: /:2: AllowedRAMSpace=-3/ });
  t.throws(() => parseCgroupConf('MinRAMSpace=12abc'), { message: /non-negative integer/ });
  t.throws(() => parseCgroupConf('justakey'), { message: /expected Key=Value/ });
  t.throws(() => parseCgroupConf('CgroupMountPoint=relative'), { message: /absolute path/ });
});

test("memory formulas follow Slurm's task/cgroup", (t) => {
  const conf = { ...defaultCgroupConf(), allowedRAMSpace: 120, maxRAMPercent: 50, minRAMSpace: 30, constrainSwapSpace: true, allowedSwapSpace: 10, maxSwapPercent: 10 };
  const total = 16 * G;
  // 2G * 120% = 2.4G, under 50% of 16G.
  t.is(memoryLimitBytes(2 * G, conf, total), Math.floor(2 * G * 1.2));
  // Clamped up to MinRAMSpace.
  t.is(memoryLimitBytes(10 * M, conf, total), 30 * M);
  // Clamped down to MaxRAMPercent of the node.
  t.is(memoryLimitBytes(10 * G, conf, total), 8 * G);
  // 0 means the whole node.
  t.is(memoryLimitBytes(0, conf, total), 8 * G);
  // memsw = alloc * AllowedSwapSpace% + limit, capped at MaxSwapPercent% + MaxRAMPercent% of the node.
  t.is(memswLimitBytes(2 * G, conf, total), Math.floor(2 * G * 0.1) + Math.floor(2 * G * 1.2));
  t.is(memswLimitBytes(12 * G, conf, total), Math.floor(12 * G * 0.1) + 8 * G);
  t.is(memswLimitBytes(20 * G, conf, total), Math.floor(16 * G * 0.1) + 8 * G, "capped");
  const l = memoryLimits(2 * G, conf, total)!;
  t.is(l.max, Math.floor(2 * G * 1.2));
  t.is(l.high, 2 * G, 'memory.high is the allocation at 100%');
  t.is(l.swapMax, Math.floor(2 * G * 0.1));
  const tight = memoryLimits(2 * G, { ...conf, allowedRAMSpace: 80 }, total)!;
  t.is(tight.high, tight.max, 'memory.high never exceeds memory.max');
  t.is(memoryLimits(2 * G, { ...conf, constrainRAMSpace: false }, total), null);
  t.is(memoryLimits(2 * G, { ...conf, constrainSwapSpace: false }, total)!.swapMax, null);
  t.is(memoryLimits(2 * G, conf, total, 5 * M)!.swapMax, 5 * M, 'an explicit swap wins');
});

test('sizes', (t) => {
  t.is(parseSize('64M'), 64 * M);
  t.is(parseSize('4g'), 4 * G);
  t.is(parseSize('1.5G'), 1.5 * G);
  t.is(parseSize('1024'), 1024);
  t.is(parseSize('2GiB'), 2 * G);
  t.throws(() => parseSize('lots'), { message: /expected a size/ });
  t.throws(() => parseSize('-1M'));
  t.is(formatSize(64 * M), '64M');
  t.is(formatSize(1000), '1000');
});
