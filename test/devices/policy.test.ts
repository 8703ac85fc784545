/**
 * Policy from a request and gres.conf (policy.ts), with a fake stat, checked
 * through decide() and the compiled program.
 */
import test from 'ava';
import { AgentError, KernelError } from '../../src/errors.js';
import { ACC_ALL, ACC_MKNOD, ACC_READ, ACC_WRITE, PSEUDO_DEVICES, buildRuleSet, compile, decide, parseGresConf, runProgram, statDevice, type DeviceNode, type RuleSet } from '../../src/devices/index.js';
import { memLogger } from './helpers.js';

const DEVS: Record<string, DeviceNode> = {
  '/dev/nvidia0': { type: 'c', major: 195, minor: 0 },
  '/dev/nvidia1': { type: 'c', major: 195, minor: 1 },
  '/dev/nvidia2': { type: 'c', major: 195, minor: 2 },
  '/dev/nvidia3': { type: 'c', major: 195, minor: 3 },
  '/dev/nvidiactl': { type: 'c', major: 195, minor: 255 },
  '/dev/sda': { type: 'b', major: 8, minor: 0 },
};
const stat = (p: string): DeviceNode => {
  const d = DEVS[p];
  if (!d) throw new KernelError('stat', p, 'ENOENT');
  return d;
};
const inventory = parseGresConf('Name=gpu File=/dev/nvidia[0-3]\n', { nodeName: 'n1' });
/** The same, plus gpu:4 at /dev/nvidia9, which does not exist. */
const withGone = parseGresConf('Name=gpu File=/dev/nvidia[0-3]\nName=gpu File=/dev/nvidia9\n', { nodeName: 'n1' });
const gpu = (i: number) => DEVS[`/dev/nvidia${i}`];
const NULL: DeviceNode = { type: 'c', major: 1, minor: 3 };
const RW = ACC_READ | ACC_WRITE;

function both(rs: RuleSet, d: DeviceNode, acc: number): boolean {
  const want = decide(rs, d, acc);
  if (runProgram(compile(rs).insns, d, acc) !== want) throw new Error('program and decide() disagree');
  return want;
}

test("open (Slurm's policy): allocated allowed, the node's other gres denied, the rest allowed", (t) => {
  const mem = memLogger();
  const rs = buildRuleSet({ gres: ['gpu:1', '/dev/nvidia3'] }, { inventory, stat, log: mem.log });
  t.is(rs.default, 'allow');
  t.false(both(rs, gpu(0), ACC_READ));
  t.true(both(rs, gpu(1), ACC_ALL));
  t.false(both(rs, gpu(2), 0), 'not even visible to access(F_OK)');
  t.true(both(rs, gpu(3), ACC_ALL));
  t.true(both(rs, NULL, ACC_ALL));
  t.true(both(rs, DEVS['/dev/nvidiactl'], RW));
  t.deepEqual(mem.lines().filter((l) => l.level >= 40), []);
});

test('a gres device that cannot be stat-ed is denied by the numbers it last had, and with none known the request is refused', (t) => {
  const mem = memLogger();
  // gpu:4 is /dev/nvidia9, which does not exist now; it was c 195:9 when last seen.
  const lastKnown = (p: string): DeviceNode | undefined => (p === '/dev/nvidia9' ? { type: 'c', major: 195, minor: 9 } : undefined);
  const rs = buildRuleSet({ gres: ['gpu:1'] }, { inventory: withGone, stat, lastKnown, log: mem.log });
  t.false(both(rs, { type: 'c', major: 195, minor: 9 }, ACC_READ));
  t.false(both(rs, gpu(0), ACC_READ));
  t.true(both(rs, gpu(1), ACC_ALL));
  t.truthy(mem.lines().find((l) => l.level === 40 && l.path === '/dev/nvidia9' && l.gres === 'gpu:4' && l.denied === 'c 195:9' && l.err));
  for (const opts of [{ inventory: withGone, stat }, { inventory: withGone, stat, lastKnown: () => undefined }]) {
    const e = t.throws(() => buildRuleSet({ gres: ['gpu:1'] }, opts), { instanceOf: AgentError });
    t.is(e?.code, 'EIO');
    t.regex(e!.message, /^gres gpu:4 \(gres.conf:2\): stat \/dev\/nvidia9: ENOENT; a gres device the agent cannot stat cannot be denied, so no device policy is built until \/dev\/nvidia9 is back/);
  }
  // In the closed policy too: a device it cannot name is not left to the default.
  t.throws(() => buildRuleSet({ policy: 'closed' }, { inventory: withGone, stat }), { message: /cannot be denied/ });
});

test('closed: pseudo-devices and allocated gres only, plus explicit allows', (t) => {
  const rs = buildRuleSet({ policy: 'closed', gres: ['gpu:0'], allow: ['/dev/nvidiactl rw', 'b 8:* r'] }, { inventory, stat });
  t.is(rs.default, 'deny');
  for (const p of PSEUDO_DEVICES) {
    const d = { type: p.rule.type as 'b' | 'c', major: p.rule.major as number, minor: p.rule.minor === '*' ? 7 : p.rule.minor };
    t.true(both(rs, d, RW), p.path);
  }
  t.true(both(rs, { type: 'c', major: 1, minor: 3 }, ACC_MKNOD));
  t.false(both(rs, { type: 'c', major: 136, minor: 4 }, ACC_MKNOD), 'pts: rw only');
  t.false(both(rs, { type: 'c', major: 1, minor: 1 }, ACC_READ), '/dev/mem is not a pseudo-device here');
  t.true(both(rs, gpu(0), ACC_ALL));
  t.false(both(rs, gpu(1), ACC_READ));
  t.true(both(rs, DEVS['/dev/nvidiactl'], RW));
  t.false(both(rs, DEVS['/dev/nvidiactl'], ACC_MKNOD));
  t.true(both(rs, DEVS['/dev/sda'], ACC_READ));
  t.false(both(rs, DEVS['/dev/sda'], RW));
});

test('a broad explicit allow never opens an unallocated gres device; an exact one is refused', (t) => {
  const rs = buildRuleSet({ policy: 'closed', gres: ['gpu:0'], allow: ['c 195:* rw'] }, { inventory, stat });
  t.true(both(rs, gpu(0), RW));
  t.false(both(rs, gpu(2), ACC_READ));
  t.true(both(rs, DEVS['/dev/nvidiactl'], RW));
  for (const allow of ['/dev/nvidia2', 'c 195:2 r', 'a 195:2 rw']) {
    const e = t.throws(() => buildRuleSet({ gres: ['gpu:0'], allow: [allow] }, { inventory, stat }), { instanceOf: AgentError });
    t.is(e?.code, 'EINVAL');
    t.regex(e!.message, /names \/dev\/nvidia2 \(gres gpu:2\), which is not allocated here/);
  }
});

test('explicit deny beats allow at the same specificity; deny narrows gres', (t) => {
  const rs = buildRuleSet({ gres: ['gpu:0'], deny: ['/dev/nvidia0 w', 'c 1:3 m'], allow: ['c 1:3 rwm'] }, { inventory, stat });
  t.true(both(rs, gpu(0), ACC_READ));
  t.false(both(rs, gpu(0), ACC_WRITE));
  t.false(both(rs, NULL, ACC_MKNOD));
  t.true(both(rs, NULL, RW));
});

test('a device that is both allocated and listed for another gres stays allowed', (t) => {
  const inv = parseGresConf('Name=gpu File=/dev/nvidia0\nName=alias File=/dev/nvidia0\n', { nodeName: 'n1' });
  const rs = buildRuleSet({ gres: ['gpu:0'] }, { inventory: inv, stat });
  t.true(both(rs, gpu(0), ACC_ALL));
});

test('input errors: unknown gres, name:index without gres.conf, bad rules, missing allocated device', (t) => {
  t.throws(() => buildRuleSet({ gres: ['gpu:7'] }, { inventory: withGone, stat }), { message: /indices 0-4/ });
  t.throws(() => buildRuleSet({ gres: ['gpu:0'] }, { stat }), { message: /no gres.conf is loaded/ });
  t.throws(() => buildRuleSet({ allow: ['c 1:3 rwx'] }, { stat }), { message: /"c 1:3 rwx"/ });
  t.throws(() => buildRuleSet({ deny: ['/dev/nope'] }, { stat }), { instanceOf: KernelError, message: /stat \/dev\/nope: ENOENT/ });
  t.throws(() => buildRuleSet({ gres: ['gpu:4'] }, { inventory: withGone, stat, lastKnown: () => gpu(3) }), { instanceOf: KernelError, message: /nvidia9/ }, 'an allocated device that cannot be stat-ed is an error, whatever it was');
  const noConf = buildRuleSet({ gres: ['/dev/nvidia2'], policy: 'closed' }, { stat });
  t.true(both(noConf, gpu(2), ACC_ALL));
});

test('pseudo-device numbers are the real ones on this machine', (t) => {
  for (const p of PSEUDO_DEVICES) {
    if (p.path.includes('*') || p.path.startsWith('/run/systemd/')) continue; // systemd makes those with mknod 0:0
    const d = statDevice(p.path);
    t.deepEqual([d.type, d.major, d.minor], [p.rule.type, p.rule.major, p.rule.minor], p.path);
  }
  t.is(PSEUDO_DEVICES.find((p) => p.path === '/dev/pts/*')!.rule.major, 136);
});
