/**
 * Every key Slurm 22.05's cgroup.conf(5) documents is honoured or reported as
 * not supported (one warning naming it); the configuration report says what
 * status shows.
 */
import test from 'ava';
import { parseCgroupConf } from '../../src/config/cgroupconf.js';
import { configReport, requiredControllers } from '../../src/config/report.js';

/** The keys of doc/man/man5/cgroup.conf.5 at slurm-22-05-8-1, with a valid value each. */
const SLURM_22_05_KEYS: Record<string, string> = {
  AllowedKmemSpace: '100',
  AllowedRAMSpace: '100',
  AllowedSwapSpace: '10',
  CgroupAutomount: 'yes',
  CgroupMountpoint: '/sys/fs/cgroup',
  CgroupPlugin: 'cgroup/v2',
  ConstrainCores: 'yes',
  ConstrainDevices: 'yes',
  ConstrainKmemSpace: 'yes',
  ConstrainRAMSpace: 'yes',
  ConstrainSwapSpace: 'yes',
  IgnoreSystemd: 'yes',
  IgnoreSystemdOnFailure: 'yes',
  MaxKmemPercent: '90',
  MaxRAMPercent: '90',
  MaxSwapPercent: '90',
  MemorySwappiness: '10',
  MinKmemSpace: '30',
  MinRAMSpace: '30',
};
const HONOURED = ['AllowedRAMSpace', 'AllowedSwapSpace', 'CgroupAutomount', 'CgroupMountpoint', 'CgroupPlugin', 'ConstrainCores', 'ConstrainDevices', 'ConstrainRAMSpace', 'ConstrainSwapSpace', 'IgnoreSystemd', 'IgnoreSystemdOnFailure', 'MaxRAMPercent', 'MaxSwapPercent', 'MinRAMSpace'];

test('cgroup.conf: each key Slurm 22.05 documents is honoured, or warned about once by name as not supported', (t) => {
  for (const [key, value] of Object.entries(SLURM_22_05_KEYS)) {
    const { warnings, unsupported } = parseCgroupConf(`${key}=${value}\n`, '/etc/slurm/cgroup.conf');
    if (HONOURED.includes(key)) {
      t.deepEqual(warnings, [], key);
      t.deepEqual(unsupported, [], key);
    } else {
      t.is(warnings.length, 1, key);
      t.regex(warnings[0], new RegExp(`^/etc/slurm/cgroup.conf:1: ${key} is not supported by cgstep \\(.+\\); ignored$`), key);
      t.deepEqual(unsupported, [key]);
    }
  }
  const v1 = parseCgroupConf('CgroupPlugin=cgroup/v1\n');
  t.deepEqual(v1.unsupported, ['CgroupPlugin']);
  t.regex(v1.warnings[0], /CgroupPlugin=cgroup\/v1 is not supported by cgstep \(it drives cgroup v2 only\)/);
  t.deepEqual(parseCgroupConf('CgroupPlugin=autodetect\n').warnings, []);
  t.deepEqual(parseCgroupConf('Frobnicate=1\n').warnings, ['cgroup.conf:1: unknown key Frobnicate ignored']);
});

test('config report: files, effective settings, required vs available controllers, dropped-limits mode, gres files', (t) => {
  const { conf, unsupported } = parseCgroupConf('ConstrainCores=yes\nConstrainRAMSpace=no\nMemorySwappiness=5\n', '/etc/slurm/cgroup.conf');
  t.deepEqual(requiredControllers(conf), ['cpuset']);
  const r = configReport({
    configFile: '/etc/slurm/cgroup.conf', gresConf: '/etc/slurm/gres.conf', conf, unsupportedKeys: unsupported, ignoreMissingControllers: true, devicePolicy: 'closed',
    available: ['hugetlb'], gresFiles: [{ name: 'gpu', index: 0, file: '/dev/null' }, { name: 'gpu', index: 1, file: '/dev/nvidia-none' }], exists: (f) => f === '/dev/null',
  });
  t.deepEqual(r.files, { cgroupConf: '/etc/slurm/cgroup.conf', gresConf: '/etc/slurm/gres.conf' });
  t.true(r.constrain.cores);
  t.false(r.constrain.ramSpace);
  t.true(r.constrain.explicit.includes('constraincores'));
  t.deepEqual(r.unsupportedKeys, ['MemorySwappiness']);
  t.deepEqual(r.controllers, { available: ['hugetlb'], required: ['cpuset'], missing: ['cpuset'] });
  t.is(r.missingControllerLimits, 'skip');
  t.deepEqual(r.devicePolicy, { constrainDevices: true, default: 'closed' });
  t.deepEqual(r.gres.map((g) => [g.file, g.exists]), [['/dev/null', true], ['/dev/nvidia-none', false]]);
});
