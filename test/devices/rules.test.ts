/**
 * Rule syntax and the reference semantics (rules.ts), without a kernel.
 */
import test from 'ava';
import fs from 'node:fs';
import { AgentError, KernelError } from '../../src/errors.js';
import { ACC_MKNOD, ACC_READ, ACC_WRITE, decide, formatRule, parseRule, statDevice, type RuleSet } from '../../src/devices/index.js';
import { splitDev, specificity } from '../../src/devices/rules.js';

const fakeStat = (p: string) => {
  if (p === '/dev/nvidia0') return { type: 'c' as const, major: 195, minor: 0 };
  throw new KernelError('stat', p, 'ENOENT');
};

test('parse: the documented forms', (t) => {
  t.deepEqual(parseRule('c 195:* rw', true), { type: 'c', major: 195, minor: '*', access: 'rw', allow: true });
  t.deepEqual(parseRule('a *:* rwm', false), { type: 'a', major: '*', minor: '*', access: 'rwm', allow: false });
  t.deepEqual(parseRule('b 8:0 r', true), { type: 'b', major: 8, minor: 0, access: 'r', allow: true });
  t.deepEqual(parseRule('  c   1:3   mwr ', true), { type: 'c', major: 1, minor: 3, access: 'rwm', allow: true }, 'free spacing, canonical access order');
  t.deepEqual(parseRule('c 1:3', true).access, 'rwm', 'access defaults to rwm');
  t.deepEqual(parseRule('a', true), { type: 'a', major: '*', minor: '*', access: 'rwm', allow: true }, "cgroup v1's bare a");
  t.deepEqual(parseRule('a r', false), { type: 'a', major: '*', minor: '*', access: 'r', allow: false });
  t.deepEqual(parseRule('/dev/nvidia0', true, { stat: fakeStat }), { type: 'c', major: 195, minor: 0, access: 'rwm', allow: true });
  t.deepEqual(parseRule('/dev/nvidia0 rw', true, { stat: fakeStat }), { type: 'c', major: 195, minor: 0, access: 'rw', allow: true });
  t.is(formatRule(parseRule('c 195:* wr', true)), 'c 195:* rw');
});

test('parse: bad text gets EINVAL naming it', (t) => {
  const bad: [string, RegExp][] = [
    ['', /empty/],
    ['x 1:3 r', /expected "<a\|b\|c>/],
    ['c', /needs <major>:<minor>/],
    ['c 1 r', /needs <major>:<minor>/],
    ['c 1:3:4 r', /expected <major>:<minor>/],
    ['c 4096:0 r', /major 4096 is out of range/],
    ['c 1:1048576 r', /minor 1048576 is out of range/],
    ['c -1:0 r', /major must be a decimal/],
    ['c 01:0 r', /major must be a decimal/],
    ['c 1:3 rx', /only use the letters r, w, m/],
    ['c 1:3 rr', /names r twice/],
    ['c 1:3 r w', /unexpected "w"/],
    ['/dev/nvidia0 r w', /expected "<path> \[access\]"/],
    ['relative/path r', /expected "<a\|b\|c>/],
  ];
  for (const [text, re] of bad) {
    const e = t.throws(() => parseRule(text, true, { stat: fakeStat }), { instanceOf: AgentError }, text);
    t.is(e?.code, 'EINVAL', text);
    t.regex(e!.message, re, text);
    if (text) t.true(e!.message.includes(JSON.stringify(text)), `names the text: ${e!.message}`);
  }
  const missing = t.throws(() => parseRule('/dev/nvidia9', true, { stat: fakeStat }), { instanceOf: KernelError });
  t.is(missing?.code, 'ENOENT');
});

test('statDevice: real nodes by stat, with major and minor; non-devices refused', (t) => {
  t.deepEqual(statDevice('/dev/null'), { type: 'c', major: 1, minor: 3 });
  t.deepEqual(statDevice('/dev/zero'), { type: 'c', major: 1, minor: 5 });
  if (fs.existsSync('/dev/loop0')) t.deepEqual(statDevice('/dev/loop0'), { type: 'b', major: 7, minor: 0 });
  t.throws(() => statDevice('/etc/hostname'), { message: /not a character or block device/ });
  t.is(t.throws(() => statDevice('/dev/nope-cgstep'), { instanceOf: KernelError })?.errno, 'ENOENT');
  // glibc's encoding of large numbers: major 0xabc, minor 0x12345
  const dev = (0x12345n & 0xffn) | ((0xabcn & 0xfffn) << 8n) | ((0x12345n & ~0xffn) << 12n);
  t.deepEqual(splitDev(dev), { major: 0xabc, minor: 0x12345 });
});

test('specificity order: exact major+minor > major:* > *:minor > *:*, typed above a', (t) => {
  const order = ['c 1:3', 'a 1:3', 'c 1:*', 'a 1:*', 'c *:3', 'a *:3', 'c *:*', 'a *:*'].map((s) => specificity(parseRule(s, true)));
  t.deepEqual(order, [7, 6, 5, 4, 3, 2, 1, 0]);
});

const rs = (dflt: 'allow' | 'deny', ...texts: string[]): RuleSet => ({
  default: dflt,
  rules: texts.map((s) => (s.startsWith('-') ? parseRule(s.slice(1), false) : parseRule(s, true))),
});
const c = (major: number, minor: number) => ({ type: 'c' as const, major, minor });
const R = ACC_READ;
const W = ACC_WRITE;
const M = ACC_MKNOD;

test('decide: a deny naming a requested bit wins unless a more specific allow covers the request; deny wins a tie; default otherwise', (t) => {
  const p = rs('allow', '-c 195:* rwm', 'c 195:2 rw');
  t.false(decide(p, c(195, 0), R));
  t.true(decide(p, c(195, 2), R | W));
  t.false(decide(p, c(195, 2), M), 'm not named by the exact rule: the wildcard deny decides');
  t.true(decide(p, c(1, 3), R | W | M));
  const tie = rs('deny', 'c 1:3 r', '-c 1:3 r', 'c 1:3 w');
  t.false(decide(tie, c(1, 3), R));
  t.true(decide(tie, c(1, 3), W));
  t.false(decide(tie, c(1, 3), R | W));
});

test('decide: requested ⊆ one allow rule; bits never come from two rules', (t) => {
  const p = rs('deny', 'c 195:0 r');
  t.true(decide(p, c(195, 0), R));
  t.false(decide(p, c(195, 0), R | W), 'an allow for r must not allow rw');
  const split = rs('deny', 'c 1:3 r', 'c 1:* w');
  t.false(decide(split, c(1, 3), R | W), 'r from one allow and w from another is not rw');
  t.true(decide(split, c(1, 3), R));
  t.true(decide(split, c(1, 3), W));
  t.false(decide(rs('deny', 'c 1:3 r', 'c 1:3 w'), c(1, 3), R | W), 'two allows on one device are not merged');
  t.true(decide(rs('deny', 'c 1:3 r', 'c 1:3 rw'), c(1, 3), R | W));
});

test('decide: access(F_OK) (no bits) is allowed when some bit is', (t) => {
  t.true(decide(rs('deny', 'c 195:0 m'), c(195, 0), 0));
  t.false(decide(rs('deny', 'c 195:0 m'), c(195, 1), 0));
  t.false(decide(rs('allow', '-c 195:0 rwm'), c(195, 0), 0));
  t.true(decide(rs('allow', '-c 195:0 rw'), c(195, 0), 0));
  t.true(decide(rs('allow'), c(1, 3), 0));
  t.false(decide(rs('deny'), c(1, 3), 0));
  t.throws(() => decide(rs('deny'), c(1, 3), 8), { message: /outside rwm/ });
});

test('decide: order of rules never matters', (t) => {
  const texts = ['-c 195:* rw', 'c 195:1 r', 'a 195:1 w', '-b *:* m', 'c *:1 m'];
  const base = rs('allow', ...texts);
  const rev = rs('allow', ...[...texts].reverse());
  for (const d of [c(195, 1), c(195, 2), { type: 'b' as const, major: 195, minor: 1 }]) {
    for (let a = 0; a < 8; a++) t.is(decide(base, d, a), decide(rev, d, a));
  }
});
