/**
 * gres.conf parsing and allocation entries (gres.ts), without a kernel; and
 * the device numbers of gres.conf's files, read off the event loop (paths.ts).
 */
import test from 'ava';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { AgentError, KernelError } from '../../src/errors.js';
import { expandList, loadGresConf, parseGresConf } from '../../src/devices/index.js';
import { GresDeviceNodes } from '../../src/devices/paths.js';
import { memLogger } from './helpers.js';

test('expandList: ranges, lists, zero padding, several brackets, plain items', (t) => {
  t.deepEqual(expandList('/dev/nvidia[0-3]'), ['/dev/nvidia0', '/dev/nvidia1', '/dev/nvidia2', '/dev/nvidia3']);
  t.deepEqual(expandList('/dev/nvidia[0,2-3]'), ['/dev/nvidia0', '/dev/nvidia2', '/dev/nvidia3']);
  t.deepEqual(expandList('node[08-10]'), ['node08', 'node09', 'node10']);
  t.deepEqual(expandList('r[1-2]n[1-2],login'), ['r1n1', 'r1n2', 'r2n1', 'r2n2', 'login']);
  t.deepEqual(expandList('/dev/dri/card[0-1],/dev/dri/renderD[128-129]'), ['/dev/dri/card0', '/dev/dri/card1', '/dev/dri/renderD128', '/dev/dri/renderD129']);
  t.deepEqual(expandList('/dev/a'), ['/dev/a']);
  for (const [bad, re] of [['n[3-1]', /backwards/], ['n[1-2', /unbalanced/], ['n[a]', /bad range/], ['a,,b', /empty item/], ['n[0-99999999]', /more than/]] as const) {
    t.throws(() => expandList(bad), { instanceOf: AgentError, message: re }, bad);
  }
});

const CONF = `
# a comment line
AutoDetect=off
Name=gpu Type=a100 File=/dev/nvidia[0-1]   # two A100s
NodeName=gpu[01-02] name=gpu type=v100 FILE=/dev/nvidia[2-3]
NodeName=other Name=gpu File=/dev/nvidia[4-7]
Name=gpu Type=t4 \\
     File=/dev/nvidia8
Name=mps Count=200
Name=shard Count=8
NodeName=gpu01 Name=rocm MultipleFiles=/dev/dri/card0,/dev/dri/renderD128
NodeName=gpu01 Name=rocm MultipleFiles=/dev/dri/card1,/dev/dri/renderD129
`;

test("parse: slurmd's order per name (Name= lines, then NodeName= lines), NodeName filter, case-insensitive keys, continuation, MultipleFiles", (t) => {
  const inv = parseGresConf(CONF, { nodeName: 'gpu01' });
  t.deepEqual(inv.names(), ['gpu', 'rocm']);
  t.deepEqual(inv.units('gpu').map((u) => [u.index, u.type, u.files]), [
    [0, 'a100', ['/dev/nvidia0']],
    [1, 'a100', ['/dev/nvidia1']],
    [2, 't4', ['/dev/nvidia8']],
    [3, 'v100', ['/dev/nvidia2']],
    [4, 'v100', ['/dev/nvidia3']],
  ]);
  t.deepEqual(inv.units('rocm').map((u) => u.files), [['/dev/dri/card0', '/dev/dri/renderD128'], ['/dev/dri/card1', '/dev/dri/renderD129']]);
  t.is(inv.units('gpu')[2].origin, 'gres.conf:7');
  t.deepEqual(inv.warnings, []);
  const other = parseGresConf(CONF, { nodeName: 'gpu03' });
  t.deepEqual(other.units('gpu').map((u) => u.files[0]), ['/dev/nvidia0', '/dev/nvidia1', '/dev/nvidia8']);
  t.deepEqual(other.units('rocm'), []);
});

test('resolve: <name>:<index> and absolute paths; clear errors', (t) => {
  const inv = parseGresConf(CONF, { nodeName: 'gpu01' });
  t.deepEqual(inv.resolve('gpu:0').files, ['/dev/nvidia0']);
  t.deepEqual(inv.resolve('gpu:2').files, ['/dev/nvidia8']);
  t.deepEqual(inv.resolve('gpu:4').files, ['/dev/nvidia3']);
  t.deepEqual(inv.resolve('rocm:1').files, ['/dev/dri/card1', '/dev/dri/renderD129']);
  t.is(inv.resolve('/dev/nvidia3').index, 4);
  t.is(inv.resolve('/dev/dri/renderD128').name, 'rocm');
  t.throws(() => inv.resolve('gpu:5'), { message: /gpu has 5 device\(s\) on node gpu01, indices 0-4/ });
  t.throws(() => inv.resolve('fpga:0'), { message: /no gres named fpga.*has: gpu, rocm/ });
  t.throws(() => inv.resolve('/dev/nvidia7'), { message: /not a File= of any gres on node gpu01/ });
  t.throws(() => inv.resolve('gpu:a100:0'), { message: /expected an absolute device path or <name>:<index>/ });
  t.throws(() => inv.resolve('gpu:01'), { instanceOf: AgentError });
});

test('AutoDetect is warned about, not fatal; an unknown key (a typo) is an error naming file:line, as in Slurm', (t) => {
  const mem = memLogger();
  const inv = parseGresConf('AutoDetect=nvml\nName=gpu File=/dev/nvidia0\nNodeName=x AutoDetect=rsmi\n', { nodeName: 'n1', log: mem.log, source: '/etc/slurm/gres.conf' });
  t.is(inv.units('gpu').length, 1);
  t.is(inv.warnings.length, 1);
  t.regex(inv.warnings[0], /^\/etc\/slurm\/gres.conf:1: AutoDetect=nvml ignored/);
  t.is(mem.lines().filter((l) => l.level === 40).length, 1);
  t.throws(() => parseGresConf('Name=gpu File=/dev/nvidia0\nName=gpu Flie=/dev/nvidia1\n', { nodeName: 'n1', source: '/etc/slurm/gres.conf' }), { instanceOf: AgentError, message: /^\/etc\/slurm\/gres.conf:2: unknown key flie/ });
});

test('bad lines: EINVAL naming file and line', (t) => {
  const bad: [string, RegExp][] = [
    ['Name=gpu File=/dev/nvidia[0-1\n', /gres.conf:1 File: unbalanced/],
    ['\n\nName=gpu File=nvidia0\n', /gres.conf:3: device file "nvidia0" is not an absolute path/],
    ['File=/dev/nvidia0\n', /gres.conf:1: File= without Name=/],
    ['Name=gpu File=/dev/a MultipleFiles=/dev/b\n', /File= and MultipleFiles= on one line/],
    ['Name=gpu Name=gpu2 File=/dev/a\n', /name given 2 times/],
    ['Name=gpu File=/dev/a garbage\n', /expected Key=Value/],
    ['Name=g/pu File=/dev/a\n', /bad gres name/],
  ];
  for (const [text, re] of bad) t.throws(() => parseGresConf(text, { nodeName: 'n1' }), { instanceOf: AgentError, message: re }, text);
});

test("lines slurmd refuses: Count= that does not match File=, a one-file MultipleFiles=, a bad Count=", (t) => {
  const bad: [string, RegExp][] = [
    ['Name=gpu Count=4 File=/dev/nvidia[0-1]\n', /^gres.conf:1: Count=4 does not match File value \(2 device unit\(s\)\)/],
    ['Name=gpu File=/dev/nvidia0 Count=0\n', /gres.conf:1: Count=0 does not match File value/],
    ['\nName=rocm Count=2 MultipleFiles=/dev/dri/card0,/dev/dri/renderD128\n', /gres.conf:2: Count=2 does not match File value \(1 device unit/],
    ['Name=rocm MultipleFiles=/dev/dri/card0\n', /^gres.conf:1: MultipleFiles= names one file; use File=/],
    ['Name=rocm MultipleFiles=/dev/dri/card[0-0]\n', /MultipleFiles= names one file/],
    ['Name=gpu Count=2x File=/dev/nvidia[0-1]\n', /gres.conf:1: invalid Count=2x/],
    ['Name=mps Count=-1\n', /invalid Count=-1/],
    ['Name=gpu File=/dev/nvidia[0-1]\nName=gpu File=/dev/nvidia1\n', /^gres.conf:2: gpu device file \/dev\/nvidia1 is listed again \(first at gres.conf:1\)/],
    ['NodeName=n1 Name=gpu File=/dev/nvidia0\nName=gpu File=/dev/nvidia0\n', /gres.conf:1: gpu device file \/dev\/nvidia0 is listed again \(first at gres.conf:2\)/],
  ];
  for (const [text, re] of bad) t.throws(() => parseGresConf(text, { nodeName: 'n1' }), { instanceOf: AgentError, message: re }, text);
  // A line for another node is not checked, as slurmd skips it before reading it.
  t.deepEqual(parseGresConf('NodeName=other Name=gpu Count=4 File=/dev/nvidia[0-1]\nName=gpu File=/dev/nvidia0\n', { nodeName: 'n1' }).units('gpu').length, 1);
  // What slurmd accepts: a matching Count (with a multiplier too), shares of shared gres, Count= alone.
  const ok = parseGresConf(
    'Name=gpu Count=2 File=/dev/nvidia[0-1]\nName=mps Count=200 File=/dev/nvidia[0-1]\nName=shard Count=1k File=/dev/nvidia0\nName=rocm Count=1 MultipleFiles=/dev/a,/dev/b\nName=bandwidth Count=4g\n',
    { nodeName: 'n1' },
  );
  t.deepEqual(ok.names(), ['gpu', 'mps', 'shard', 'rocm']);
  t.is(parseGresConf('Name=gpu Count=1k File=/dev/nvidia[0-1023]\n', { nodeName: 'n1' }).units('gpu').length, 1024);
});

test('a gres.conf whose device lines are all for other nodes, or that has no File=, says why this node has no devices (logged and kept)', (t) => {
  const mem = memLogger();
  const other = parseGresConf('NodeName=node1 Name=gpu File=/dev/nvidia[0-1]\nNodeName=gpu[01-02] Name=gpu File=/dev/nvidia[2-3]\nNodeName=vm Name=mps Count=100\n', { nodeName: 'vm', source: '/etc/gres.conf', log: mem.log });
  t.deepEqual(other.all(), []);
  t.is(other.unconfined.length, 2);
  t.regex(other.unconfined[0], /^\/etc\/gres.conf: every device line \(File=, MultipleFiles=\) is for another node \(NodeName=node1, NodeName=gpu\[01-02\]\) and none for vm, the node name this agent uses \(--node-name/);
  t.regex(other.unconfined[1], /no File= is known for vm \(only Name=mps\)/);
  const warned = mem.lines().filter((l) => l.level === 40);
  t.is(warned.length, 2);
  t.deepEqual(warned[0].nodeNamesSeen, ['node1', 'gpu[01-02]']);
  t.is(warned[0].nodeName, 'vm');
  const auto = parseGresConf('AutoDetect=nvml\nName=gpu Count=4\n', { nodeName: 'n1' });
  t.deepEqual(auto.unconfined.map((u) => /only (.*)\)/.exec(u)![1]), ['AutoDetect=nvml, Name=gpu']);
  // A node with devices, or a gres.conf with no gres lines at all, has nothing to say.
  t.deepEqual(parseGresConf(CONF, { nodeName: 'gpu01' }).unconfined, []);
  t.deepEqual(parseGresConf('NodeName=node1 Name=gpu File=/dev/nvidia0\nName=gpu File=/dev/nvidia1\n', { nodeName: 'vm' }).unconfined, []);
  t.deepEqual(parseGresConf('# empty\n', { nodeName: 'vm' }).unconfined, []);
});

test('comments, quotes, CRLF and escaped #', (t) => {
  const inv = parseGresConf('Name=gpu File="/dev/nvidia0"  # c\r\n# Name=gpu File=/dev/x\r\nName=gpu File=/dev/a\\#b\n', { nodeName: 'n' });
  t.deepEqual(inv.units('gpu').map((u) => u.files[0]), ['/dev/nvidia0', '/dev/a#b']);
});

test('loadGresConf reads a file; a missing one is a KernelError', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-gres-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const f = path.join(dir, 'gres.conf');
  fs.writeFileSync(f, 'Name=gpu File=/dev/nvidia[0-1]\n');
  t.deepEqual(loadGresConf(f, 'n1').units('gpu').map((u) => u.origin), [`${f}:1`, `${f}:1`]);
  const e = t.throws(() => loadGresConf(path.join(dir, 'none'), 'n1'), { instanceOf: KernelError });
  t.is(e?.errno, 'ENOENT');
});

test("gres devices are read off the event loop and kept: a policy is built from the last reading, not a stat of its own", async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-gresnodes-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const gpu0 = path.join(dir, 'nvidia0');
  const gpu1 = path.join(dir, 'nvidia1');
  execFileSync('mknod', [gpu0, 'c', '195', '0']);
  fs.writeFileSync(gpu1, 'not a device');
  const nodes = new GresDeviceNodes([gpu0, gpu1, path.join(dir, 'missing')], { maxAgeMs: 60000 });
  await nodes.refresh();
  t.deepEqual(nodes.stat(gpu0), { type: 'c', major: 195, minor: 0 });
  t.throws(() => nodes.stat(gpu1), { instanceOf: AgentError, message: /not a character or block device/ });
  t.throws(() => nodes.stat(path.join(dir, 'missing')), { instanceOf: KernelError, message: /ENOENT/ });
  // Gone from the file system, still known until the next reading: stat() did not look.
  fs.rmSync(gpu0);
  execFileSync('mknod', [gpu1 + '.new', 'c', '195', '1']);
  fs.renameSync(gpu1 + '.new', gpu1);
  t.deepEqual(nodes.stat(gpu0), { type: 'c', major: 195, minor: 0 });
  await nodes.refresh();
  t.throws(() => nodes.stat(gpu0), { instanceOf: KernelError });
  t.deepEqual(nodes.stat(gpu1), { type: 'c', major: 195, minor: 1 });
  // A path it was not given is stat'ed as before.
  t.throws(() => nodes.stat(path.join(dir, 'other')), { instanceOf: KernelError });
});

test('a gres device last read as missing is stat-ed again before it is used; one that is gone keeps the numbers it had when last seen', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-gresnodes-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const gpu0 = path.join(dir, 'nvidia0');
  const gpu1 = path.join(dir, 'nvidia1');
  execFileSync('mknod', [gpu0, 'c', '195', '0']);
  const nodes = new GresDeviceNodes([gpu0, gpu1], { maxAgeMs: 60000 });
  await nodes.refresh();
  t.throws(() => nodes.stat(gpu1), { instanceOf: KernelError, message: /ENOENT/ });
  t.is(nodes.lastKnown(gpu1), undefined, 'never seen');
  // The node appears (a driver making it lazily): the very next use sees it, with no refresh in between.
  execFileSync('mknod', [gpu1, 'c', '195', '1']);
  t.deepEqual(nodes.stat(gpu1), { type: 'c', major: 195, minor: 1 });
  t.deepEqual(nodes.lastKnown(gpu1), { type: 'c', major: 195, minor: 1 });
  // Gone (a driver reload): the reading says so, and the numbers it had are kept.
  fs.rmSync(gpu0);
  await nodes.refresh();
  t.throws(() => nodes.stat(gpu0), { instanceOf: KernelError, message: /ENOENT/ });
  t.deepEqual(nodes.lastKnown(gpu0), { type: 'c', major: 195, minor: 0 });
  // Back with other numbers: used at once.
  execFileSync('mknod', [gpu0, 'c', '195', '7']);
  t.deepEqual(nodes.stat(gpu0), { type: 'c', major: 195, minor: 7 });
  t.deepEqual(nodes.lastKnown(gpu0), { type: 'c', major: 195, minor: 7 });
});

test("units are numbered as slurmd numbers them: every line that starts with Name= first, then every line that starts with NodeName=", (t) => {
  // slurmd parses the two kinds of line into two arrays and loads Name= lines before NodeName= lines
  // (gres_g_node_config_load), so SLURM_STEP_GPUS=0 here is nvidia2, whatever the lines' order in the file.
  const inv = parseGresConf('NodeName=n1 Name=gpu File=/dev/nvidia[0-1]\nName=gpu File=/dev/nvidia[2-3]\nNodeName=n1 Name=gpu File=/dev/nvidia4\nName=gpu File=/dev/nvidia5\n', { nodeName: 'n1' });
  t.deepEqual(inv.units('gpu').map((u) => [u.index, u.files[0], u.origin]), [
    [0, '/dev/nvidia2', 'gres.conf:2'],
    [1, '/dev/nvidia3', 'gres.conf:2'],
    [2, '/dev/nvidia5', 'gres.conf:4'],
    [3, '/dev/nvidia0', 'gres.conf:1'],
    [4, '/dev/nvidia1', 'gres.conf:1'],
    [5, '/dev/nvidia4', 'gres.conf:3'],
  ]);
  t.deepEqual(inv.resolve('gpu:0').files, ['/dev/nvidia2']);
  t.is(inv.resolve('/dev/nvidia0').index, 3);
});

test('a line with Name= that does not start with Name= or NodeName= is an error naming file:line, as slurmd stops on it', (t) => {
  // A NodeName= later on the line would otherwise be read as a node filter that slurmd never applies.
  for (const [text, key] of [['Name=gpu NodeName=n2 File=/dev/nvidia0\n', 'NodeName'], ['Type=a100 Name=gpu File=/dev/nvidia0\n', 'Type'], ['AutoDetect=off Name=gpu File=/dev/nvidia0\n', 'AutoDetect']] as const) {
    t.throws(() => parseGresConf(text, { nodeName: 'n1', source: '/etc/slurm/gres.conf' }), { instanceOf: AgentError, message: new RegExp(`^/etc/slurm/gres.conf:1: .*${key}=`) }, text);
  }
});
