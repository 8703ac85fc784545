/**
 * The compiler without a kernel: golden programs (exact bytes and disassembly,
 * in golden/; regenerate with UPDATE_GOLDEN=1 and review the diff), and
 * properties over thousands of random rule sets: the emitted program, run by
 * the interpreter, gives decide()'s verdict for every device and access, in
 * the chain layout and in the binary search of the exact entries (forced on
 * small rule sets, and by size on sets of 20-300 exact rules); normalising is
 * order-independent and idempotent; no instruction is unreachable, no test
 * has an outcome the verifier's bounds rule out; every jump is forward.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import {
  ACC_ALL,
  compile,
  compileNormal,
  decide,
  decideNormal,
  disassemble,
  emit,
  normalize,
  parsePolicy,
  parseRule,
  runProgram,
  serializePolicy,
  unreachable,
  type DeviceNode,
  type DeviceRule,
  type RuleSet,
} from '../../src/devices/index.js';
import { MAX_INSNS, OP, TREE_MIN, compileCacheSize, decode } from '../../src/devices/compiler.js';
import { CONDITIONAL, InterpError, boundsCheck, runInsns, devCtx } from '../../src/devices/interp.js';
import { GOLDEN_CASES, searchRuleArbs } from './cases.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const GOLDEN = path.join(here, 'golden');
const update = process.env.UPDATE_GOLDEN === '1';

function goldenText(name: string, why: string, rs: RuleSet): string {
  const c = compile(rs);
  const hex = [];
  for (let i = 0; i < c.insns.length; i += 8) hex.push(c.insns.subarray(i, i + 8).toString('hex'));
  const src = rs.rules.map((r) => `${r.allow ? 'allow' : 'deny '} ${r.type} ${r.major}:${r.minor} ${r.access}`);
  return [
    `# ${name}: ${why}`,
    `# default ${rs.default}`,
    ...src.map((s) => `# ${s}`),
    '## normal form',
    c.key.trimEnd(),
    '## instructions',
    ...hex,
    '## disassembly',
    disassemble(c.insns, c.labels).trimEnd(),
    '',
  ].join('\n');
}

for (const c of GOLDEN_CASES) {
  test(`golden: ${c.name}`, (t) => {
    const file = path.join(GOLDEN, `${c.name}.txt`);
    const text = goldenText(c.name, c.why, c.rules);
    if (update) fs.writeFileSync(file, text);
    t.is(text, fs.readFileSync(file, 'utf8'));
    const { insns } = compile(c.rules);
    t.deepEqual(unreachable(insns), []);
    t.deepEqual(boundsCheck(insns), { decided: [], dead: [] });
    exhaustive(t, c.rules, insns, [0, 1, 3, 5, 7, 8, 10, 195, 136, 508], [0, 1, 2, 3, 4, 5, 7, 8, 9, 200, 254, 255]);
  });
}

function exhaustive(t: { is: (a: unknown, b: unknown, m?: string) => void; fail: (m: string) => void }, rs: RuleSet, insns: Buffer, majors: number[], minors: number[]): void {
  for (const type of ['b', 'c'] as const) {
    for (const major of majors) {
      for (const minor of minors) {
        const d = { type, major, minor };
        for (let acc = 0; acc <= ACC_ALL; acc++) {
          const want = decide(rs, d, acc);
          if (runProgram(insns, d, acc) !== want) return t.fail(`program: ${type} ${major}:${minor} access ${acc} should be ${want}`);
        }
      }
    }
  }
}

test('prologue and entry shape: the six-instruction prologue, then type, major, minor, access', (t) => {
  const c = compile({ default: 'deny', rules: [parseRule('c 195:0 r', true)] });
  const x = decode(c.insns);
  t.deepEqual(x.slice(0, 6).map((i) => i.code), [OP.LDXW, OP.AND32K, OP.LDXW, OP.RSH32K, OP.LDXW, OP.LDXW]);
  t.deepEqual(x.slice(0, 6).map((i) => [i.dst, i.src, i.off, i.imm]), [[2, 1, 0, 0], [2, 0, 0, 0xffff], [3, 1, 0, 0], [3, 0, 0, 16], [4, 1, 4, 0], [5, 1, 8, 0]]);
  // if r2 != 2 (char); if r4 != 195; if r5 != 0; if r3 & ~r (w|m = 5) goto deny; goto allow; deny; allow
  t.deepEqual(x.slice(6).map((i) => [i.code, i.dst, i.off, i.imm]), [
    [OP.JNEK, 2, 4, 2],
    [OP.JNEK, 4, 3, 195],
    [OP.JNEK, 5, 2, 0],
    [OP.JSETK, 3, 1, 5],
    [OP.JA, 0, 2, 0],
    [OP.MOV64K, 0, 0, 0],
    [OP.EXIT, 0, 0, 0],
    [OP.MOV64K, 0, 0, 1],
    [OP.EXIT, 0, 0, 0],
  ]);
});

test('requested ⊆ allowed: an allow of r refuses rw and w (the containerd over-permit)', (t) => {
  const rs: RuleSet = { default: 'deny', rules: [parseRule('c 195:0 r', true)] };
  const { insns } = compile(rs);
  const gpu = { type: 'c' as const, major: 195, minor: 0 };
  t.true(runProgram(insns, gpu, 2));
  t.false(runProgram(insns, gpu, 2 | 4));
  t.false(runProgram(insns, gpu, 4));
  t.false(runProgram(insns, gpu, 1));
  t.true(runProgram(insns, gpu, 0), 'F_OK: some access is allowed');
  t.false(runProgram(insns, { ...gpu, minor: 1 }, 0), 'F_OK on a device with no access');
});

/** Each [rules, device, access, allowed] through decide(), the normal form and the emitted program (chain and search). */
function verdicts(t: { is: (a: unknown, b: unknown, m?: string) => void }, dflt: 'allow' | 'deny', texts: string[], cases: [string, number, boolean][]): void {
  const rs: RuleSet = { default: dflt, rules: texts.map((x) => (x.startsWith('-') ? parseRule(x.slice(1), false) : parseRule(x, true))) };
  const c = compile(rs);
  const tree = emit(c.policy, { treeMin: 1 }).insns;
  for (const [dev, acc, want] of cases) {
    const [type, mm] = dev.split(' ');
    const d = { type: type as 'b' | 'c', major: Number(mm.split(':')[0]), minor: Number(mm.split(':')[1]) };
    const what = `${dflt} [${texts.join(', ')}]: ${dev} access ${acc}`;
    t.is(decide(rs, d, acc), want, `decide: ${what}`);
    t.is(decideNormal(c.policy, d, acc), want, `normal form: ${what}`);
    t.is(runProgram(c.insns, d, acc), want, `program: ${what}`);
    t.is(runProgram(tree, d, acc), want, `searched program: ${what}`);
  }
}

const R = 2;
const W = 4;
const M = 1;
const RW = R | W;

test('one allow rule must cover every requested bit: r from one rule and w from another never make rw (cgroup v1, crun, systemd)', (t) => {
  verdicts(t, 'deny', ['c 42:1 r', 'c 42:* w'], [
    ['c 42:1', RW, false],
    ['c 42:1', W, true],
    ['c 42:1', R, true],
    ['c 42:2', W, true],
    ['c 42:2', R, false],
    ['c 42:1', 0, true],
  ]);
  // Two allows on the same device are not merged (runc's emulator merges them; v1, crun and systemd do not).
  verdicts(t, 'deny', ['c 42:1 r', 'c 42:1 w'], [
    ['c 42:1', RW, false],
    ['c 42:1', R, true],
    ['c 42:1', W, true],
    ['c 42:1', M, false],
  ]);
  verdicts(t, 'deny', ['c 42:* rw', '-c 42:1 w'], [
    ['c 42:1', R, true],
    ['c 42:1', RW, false],
    ['c 42:1', W, false],
    ['c 42:2', RW, true],
  ]);
  const n = normalize({ default: 'deny', rules: [parseRule('c 1:3 r', true), parseRule('c 1:* w', true)] });
  t.deepEqual(n.entries.map((e) => [e.major, e.minor, e.masks]), [[1, 3, [W, R]], [1, '*', [W]]]);
  t.is(serializePolicy(n).split('\n')[2], 'c 1:3 w,r');
});

test('cases from the published semantics of cgroup v1 (devices.allow), crun and systemd (DeviceAllow=)', (t) => {
  // v1 whitelist: "a *:* rwm" then "c 1:3 r": a more specific allow adds nothing under an allow-all.
  verdicts(t, 'deny', ['a *:* rwm', 'c 1:3 r'], [['c 1:3', RW | M, true]]);
  // systemd DeviceAllow=/dev/null r and DeviceAllow=char-mem rw (major 1): rw of null comes from char-mem alone.
  verdicts(t, 'deny', ['c 1:3 r', 'c 1:* rw'], [
    ['c 1:3', RW, true],
    ['c 1:3', RW | M, false],
    ['c 1:5', W, true],
  ]);
  // crun/runc spec: deny all, allow "c 10:200 rwm" (tun): mknod included; other minors of 10 not.
  verdicts(t, 'deny', ['-a *:* rwm', 'c 10:200 rwm'], [
    ['c 10:200', RW | M, true],
    ['c 10:229', R, false],
  ]);
  // runc's default allow list entry "c *:* m" with "b *:* m": mknod of anything, open of nothing.
  verdicts(t, 'deny', ['c *:* m', 'b *:* m'], [
    ['c 195:0', M, true],
    ['b 8:0', M, true],
    ['c 195:0', R, false],
    ['c 195:0', R | M, false],
  ]);
  // A deny of w under an allow-all (the OCI "deny w on 8:*" example): rw refused, r kept, and a more
  // specific allow of rw lets that one device through.
  verdicts(t, 'allow', ['-b 8:* w', 'b 8:1 rw'], [
    ['b 8:0', R, true],
    ['b 8:0', RW, false],
    ['b 8:1', RW, true],
    ['b 8:1', RW | M, false],
  ]);
});

test('the interpreter is strict: unknown opcodes, unset registers, backward jumps, bad context reads', (t) => {
  const d: DeviceNode = { type: 'c', major: 1, minor: 3 };
  t.throws(() => runProgram(Buffer.from('9500000000000000', 'hex'), d, 0), { instanceOf: InterpError, message: /r0 read before written/ });
  t.throws(() => runProgram(Buffer.from('0700000001000000', 'hex'), d, 0), { instanceOf: InterpError, message: /opcode 0x7/ });
  t.throws(() => runProgram(Buffer.from('b7000000010000000500feff000000009500000000000000', 'hex'), d, 0), { instanceOf: InterpError, message: /backward/ });
  t.throws(() => runProgram(Buffer.from('61120c0000000000', 'hex'), d, 0), { instanceOf: InterpError, message: /out of bounds/ });
  t.throws(() => runProgram(Buffer.from('b700000001000000', 'hex'), d, 0), { instanceOf: InterpError, message: /fell off/ });
  t.is(runInsns(decode(compile({ default: 'allow', rules: [] }).insns), devCtx(d, 2)).r0, 1n);
});

test('compile cache: same rule set in another order is one entry; results are copies', (t) => {
  const a: RuleSet = { default: 'allow', rules: [parseRule('c 9:1 r', false), parseRule('c 9:2 w', false)] };
  const b: RuleSet = { default: 'allow', rules: [...a.rules].reverse() };
  const x = compile(a);
  const size = compileCacheSize();
  const y = compile(a);
  t.is(compileCacheSize(), size);
  t.true(x.insns.equals(y.insns));
  x.insns.fill(0);
  t.false(compile(a).insns.equals(x.insns), 'callers get their own Buffer');
  t.true(compile(b).insns.equals(y.insns));
  for (let i = 0; i < 200; i++) compile({ default: 'deny', rules: [parseRule(`c 10:${i} r`, true)] });
  t.true(compileCacheSize() <= 64);
});

test('size limit: a rule set too big for 16-bit jumps is refused with E2BIG, not mis-compiled', (t) => {
  const rules: DeviceRule[] = [];
  for (let i = 0; i < 20000; i++) rules.push({ type: 'c', major: 200 + (i % 50), minor: i, access: 'r', allow: true });
  t.throws(() => compile({ default: 'deny', rules }), { message: /too large/, instanceOf: Error });
  // The chain refused 7000 of these (5 instructions each); the search takes them in 1.75.
  const rs: RuleSet = { default: 'deny', rules: rules.slice(0, 7000) };
  const c = compile(rs);
  t.true(c.insns.length / 8 < MAX_INSNS);
  t.throws(() => emit(c.policy, { treeMin: Infinity }), { message: /too large/ });
  t.deepEqual(unreachable(c.insns), []);
  for (const i of [0, 1, 49, 50, 3499, 6998, 6999]) {
    const d = { type: 'c' as const, major: 200 + (i % 50), minor: i };
    t.true(runProgram(c.insns, d, 2), `${i}: r allowed`);
    t.false(runProgram(c.insns, d, 4), `${i}: w denied`);
    t.false(runProgram(c.insns, { ...d, minor: i + 50 * 140 }, 2), `${i}: a neighbour minor is not`);
  }
});

test('size limit: wildcards that overlap into too many patterns are refused with E2BIG naming it, however few the rules; under the bound they keep their meaning', (t) => {
  // h "c M:*" and h "c *:N" intersect in h * h patterns "c M:N".
  const grid = (h: number): RuleSet => ({
    default: 'allow',
    rules: [
      ...Array.from({ length: h }, (_, i): DeviceRule => ({ type: 'c', major: i, minor: '*', access: 'rw', allow: i % 2 === 0 })),
      ...Array.from({ length: h }, (_, i): DeviceRule => ({ type: 'c', major: '*', minor: i, access: 'w', allow: false })),
    ],
  });
  // 182 rules (a user may send 256): 8,281 cells.
  t.throws(() => compile(grid(91)), { message: /more than 8192 overlapping patterns/ });
  const rs = grid(89);
  const c = compile(rs);
  t.deepEqual(unreachable(c.insns), []);
  exhaustive(t, rs, c.insns, [0, 1, 2, 50, 88, 89, 4095], [0, 1, 2, 50, 88, 89, 1048575]);
  // Distinct numbers are bounded too (each pattern is a small integer): 4,096 majors leave room for 32,767 minors.
  const many: DeviceRule[] = Array.from({ length: 32768 }, (_, i) => ({ type: 'c', major: i % 4096, minor: i, access: 'r', allow: true }));
  t.throws(() => normalize({ default: 'deny', rules: many }), { message: /32768 distinct minor numbers/ });
});

test(`threshold: ${TREE_MIN - 1} exact entries stay a chain, ${TREE_MIN} become a search; a miss costs log2, not n`, (t) => {
  const exactRules = (n: number): RuleSet => ({ default: 'allow', rules: Array.from({ length: n }, (_, i) => ({ type: 'c' as const, major: 200 + (i % 3), minor: i, access: 'rwm', allow: false })) });
  const ops = (rs: RuleSet) => new Set(decode(compile(rs).insns).map((x) => x.code));
  t.false(ops(exactRules(TREE_MIN - 1)).has(OP.JGTK));
  t.false(ops(exactRules(TREE_MIN - 1)).has(OP.JEQK));
  t.true(ops(exactRules(TREE_MIN)).has(OP.JGTK));
  const steps = (rs: RuleSet, d: DeviceNode) => runInsns(decode(compile(rs).insns), devCtx(d, 2)).steps;
  const null_ = { type: 'c' as const, major: 1, minor: 3 };
  // prologue 6, type 1, majors 2, then the default block: the same for 16 and 4096 entries.
  t.is(steps(exactRules(TREE_MIN), null_), steps(exactRules(4096), null_));
  t.true(steps(exactRules(4096), { type: 'c', major: 201, minor: 4000 }) <= 6 + 1 + 2 + 1 + 10 + 4 + 2);
  t.true(steps(exactRules(TREE_MIN - 1), null_) > steps(exactRules(TREE_MIN), null_));
});

test('search layout: type, then majors, then minors; hits jump to the shared exits or one check per mask; misses reload r4, r5 and go on', (t) => {
  const rs: RuleSet = {
    default: 'deny',
    rules: [
      ...Array.from({ length: 16 }, (_, i) => ({ type: 'c' as const, major: 195, minor: i, access: i % 2 ? 'rw' : 'rwm', allow: true })),
      { type: 'b', major: 8, minor: 0, access: 'r', allow: true },
      { type: 'c', major: 1, minor: '*', access: 'rw', allow: true },
    ],
  };
  const c = compile(rs);
  const x = decode(c.insns);
  t.deepEqual([x[6].code, x[6].dst, x[6].imm], [OP.JNEK, 2, 2], 'c first');
  const reload = x.findIndex((i, k) => k > 6 && i.code === OP.LDXW);
  t.deepEqual(x.slice(reload, reload + 2).map((i) => [i.code, i.dst, i.off]), [[OP.LDXW, 4, 4], [OP.LDXW, 5, 8]]);
  // rw checks: one shared by the JEQ hits, one inline after the last key of each of the
  // 4 leaves (195:3, 7, 11, 15); then the b 8:0 r entry's and the c 1:* entry's.
  t.is(x.filter((i) => i.code === OP.JSETK).length, 1 + 4 + 1 + 1);
  const jeqTargets = new Set(x.flatMap((i, k) => (i.code === OP.JEQK && x[k + 1 + i.off].code === OP.JSETK ? [k + 1 + i.off] : [])));
  t.is(jeqTargets.size, 1, 'the rw hits share one check');
  t.is(x.filter((i) => i.code === OP.EXIT).length, 2);
  t.deepEqual(boundsCheck(c.insns), { decided: [], dead: [] });
  // No tree entry at all when every exact entry is in the chain's place.
  t.is(decode(emit(c.policy, { treeMin: Infinity }).insns).filter((i) => i.code === OP.JGTK).length, 0);
});

test('serialised form round-trips and rejects bad text', (t) => {
  for (const c of GOLDEN_CASES) {
    const p = normalize(c.rules);
    t.deepEqual(parsePolicy(serializePolicy(p)), p);
  }
  t.throws(() => parsePolicy('nope\n'), { message: /line 1/ });
  t.throws(() => parsePolicy('cgstep-devices 1\ndefault maybe\n'), { message: /line 2/ });
  t.throws(() => parsePolicy('cgstep-devices 1\ndefault deny\nc 1:3 rx\n'), { message: /line 3/ });
  t.throws(() => parsePolicy('cgstep-devices 1\ndefault deny\nc 1:3 r\nc 1:3 w\n'), { message: /duplicate/ });
  t.throws(() => parsePolicy('cgstep-devices 1\ndefault deny\nc 5000:3 r\n'), { message: /out of range|major/ });
  t.throws(() => parsePolicy('cgstep-devices 1\ndefault deny\nc 1:3 rw,r\n'), { message: /line 3.*none inside another/ });
  t.deepEqual(parsePolicy('cgstep-devices 1\ndefault deny\nc 1:3 w,r\n').entries[0].masks, [4, 2]);
});

// ---- properties -------------------------------------------------------------

const smallNum = fc.oneof(fc.constant('*' as const), fc.integer({ min: 0, max: 3 }));
const arbRule: fc.Arbitrary<DeviceRule> = fc.record({
  type: fc.constantFrom('a' as const, 'b' as const, 'c' as const),
  major: smallNum,
  minor: smallNum,
  access: fc.subarray(['r', 'w', 'm'], { minLength: 1 }).map((a) => a.join('')),
  allow: fc.boolean(),
});
const arbRuleSet: fc.Arbitrary<RuleSet> = fc.record({
  default: fc.constantFrom('allow' as const, 'deny' as const),
  rules: fc.array(arbRule, { maxLength: 14 }),
});

test('property: interpreter(program) == decide() on every device and access, chain and forced search (3000 rule sets, exhaustive small domain)', (t) => {
  fc.assert(
    fc.property(arbRuleSet, (rs) => {
      const c = compile(rs);
      const prog = decode(c.insns);
      // The same normal form with every exact entry (even one) in a search.
      const tree = decode(emit(c.policy, { treeMin: 1 }).insns);
      for (const type of ['b', 'c'] as const) {
        for (let major = 0; major <= 4; major++) {
          for (let minor = 0; minor <= 4; minor++) {
            const d = { type, major, minor };
            for (let acc = 0; acc <= ACC_ALL; acc++) {
              const want = decide(rs, d, acc);
              if (runProgram(prog, d, acc) !== want) return false;
              if (runProgram(tree, d, acc) !== want) return false;
              if (decideNormal(c.policy, d, acc) !== want) return false;
            }
          }
        }
      }
      return true;
    }),
    { numRuns: 3000 },
  );
  t.pass();
});

test('property: 20-300 exact rules and some wildcards (the search by size): verdicts on hits, neighbours and misses; program shape (400 rule sets)', (t) => {
  const { exactRule, wildRule } = searchRuleArbs();
  fc.assert(
    fc.property(
      fc.constantFrom('allow' as const, 'deny' as const),
      fc.array(exactRule, { minLength: 20, maxLength: 300 }),
      fc.array(wildRule, { maxLength: 8 }),
      fc.array(fc.record({ type: fc.constantFrom('b' as const, 'c' as const), acc: fc.integer({ min: 0, max: 7 }), pick: fc.nat(), delta: fc.integer({ min: -2, max: 2 }), major: fc.integer({ min: 0, max: 4095 }), minor: fc.integer({ min: 0, max: 0xfffff }) }), { minLength: 20, maxLength: 60 }),
      (dflt, exact, wild, reqs) => {
        const rs: RuleSet = { default: dflt, rules: [...exact, ...wild] };
        const c = compile(rs);
        const prog = decode(c.insns);
        const nExact = c.policy.entries.filter((e) => e.type !== 'a' && e.major !== '*' && e.minor !== '*').length;
        if ((nExact >= TREE_MIN) !== prog.some((x) => x.code === OP.JGTK || x.code === OP.JEQK)) return false;
        if (unreachable(prog).length > 0) return false;
        const b = boundsCheck(prog);
        if (b.decided.length > 0 || b.dead.length > 0) return false;
        for (const q of reqs) {
          // A rule's own device (a hit), its neighbours (misses next to a key), or anywhere.
          const r = exact[q.pick % exact.length];
          const d = q.pick % 3 === 2 ? { type: q.type, major: q.major, minor: q.minor } : { type: q.pick % 3 === 0 ? r.type : q.type, major: r.major as number, minor: Math.max(0, (r.minor as number) + q.delta) };
          if (runProgram(prog, d, q.acc) !== decide(rs, d, q.acc)) return false;
        }
        return true;
      },
    ),
    { numRuns: 400 },
  );
  t.pass();
});

test('property: wide numbers, random requests (5000 pairs)', (t) => {
  const num = fc.oneof(fc.constant('*' as const), fc.integer({ min: 0, max: 4095 }), fc.integer({ min: 0, max: 2 }));
  const rule = fc.record({
    type: fc.constantFrom('a' as const, 'b' as const, 'c' as const),
    major: num,
    minor: fc.oneof(num, fc.integer({ min: 0, max: 0xfffff })),
    access: fc.subarray(['r', 'w', 'm'], { minLength: 1 }).map((a) => a.join('')),
    allow: fc.boolean(),
  });
  fc.assert(
    fc.property(
      fc.constantFrom('allow' as const, 'deny' as const),
      fc.array(rule, { maxLength: 30 }),
      fc.array(fc.record({ type: fc.constantFrom('b' as const, 'c' as const), major: fc.integer({ min: 0, max: 4095 }), minor: fc.integer({ min: 0, max: 0xfffff }), acc: fc.integer({ min: 0, max: 7 }), pick: fc.nat() }), { minLength: 1, maxLength: 20 }),
      (dflt, rules, reqs) => {
        const rs: RuleSet = { default: dflt, rules };
        const c = compile(rs);
        for (const q of reqs) {
          // Half the requests hit a rule's own numbers, so matches are common.
          const r = rules.length > 0 && q.pick % 2 === 0 ? rules[q.pick % rules.length] : undefined;
          const d = { type: q.type, major: r && r.major !== '*' ? r.major : q.major, minor: r && r.minor !== '*' ? r.minor : q.minor };
          if (runProgram(c.insns, d, q.acc) !== decide(rs, d, q.acc)) return false;
        }
        return true;
      },
    ),
    { numRuns: 5000 },
  );
  t.pass();
});

test('property: normal form is order- and duplicate-independent, and idempotent', (t) => {
  fc.assert(
    fc.property(arbRuleSet, fc.infiniteStream(fc.nat()), (rs, rnd) => {
      const shuffled = [...rs.rules, ...rs.rules.filter((_, i) => i % 3 === 0)];
      for (let i = shuffled.length - 1; i > 0; i--) {
        const j = rnd.next().value % (i + 1);
        [shuffled[i], shuffled[j]] = [shuffled[j], shuffled[i]];
      }
      const a = normalize(rs);
      const b = normalize({ default: rs.default, rules: shuffled });
      if (serializePolicy(a) !== serializePolicy(b)) return false;
      if (!emit(a).insns.equals(emit(b).insns)) return false;
      return serializePolicy(parsePolicy(serializePolicy(a))) === serializePolicy(a);
    }),
    { numRuns: 2000 },
  );
  t.pass();
});

test('property: no unreachable instruction, forward jumps only, at most two exits, no redundant entry', (t) => {
  fc.assert(
    fc.property(arbRuleSet, (rs) => {
      const c = compile(rs);
      const x = decode(c.insns);
      if (unreachable(c.insns).length) return false;
      for (const i of x) if ((i.code === OP.JA || CONDITIONAL.has(i.code)) && i.off < 0) return false;
      if (x.some((i) => i.code === OP.JA && i.off === 0)) return false; // the kernel would drop it as a nop
      if (x.filter((i) => i.code === OP.EXIT).length > 2) return false;
      const b = boundsCheck(c.insns);
      if (b.decided.length > 0 || b.dead.length > 0) return false;
      // The same, all exact entries searched.
      const tree = emit(c.policy, { treeMin: 1 }).insns;
      const y = decode(tree);
      if (unreachable(tree).length) return false;
      if (y.some((i) => (i.code === OP.JA || CONDITIONAL.has(i.code)) && i.off < 0) || y.some((i) => i.code === OP.JA && i.off === 0)) return false;
      if (y.filter((i) => i.code === OP.EXIT).length > 2) return false;
      const bt = boundsCheck(tree);
      if (bt.decided.length > 0 || bt.dead.length > 0) return false;
      // No b/c entry repeats what its devices would get without it (the rules
      // use numbers 0-3, so 4 stands for "any other" and every entry has a
      // witness). An `a` entry may be shadowed by a `b` and a `c` entry that
      // together cover it: kept, harmless, and still reachable for the verifier.
      const n = c.policy;
      for (let k = 0; k < n.entries.length; k++) {
        if (n.entries[k].type === 'a') continue;
        const without = { ...n, entries: n.entries.filter((_, j) => j !== k) };
        let differs = false;
        for (const type of ['b', 'c'] as const) {
          for (let major = 0; major <= 4 && !differs; major++) {
            for (let minor = 0; minor <= 4 && !differs; minor++) {
              for (let acc = 0; acc <= 7 && !differs; acc++) {
                const d = { type, major, minor };
                differs = decideNormal(n, d, acc) !== decideNormal(without, d, acc);
              }
            }
          }
        }
        if (!differs) return false;
      }
      return true;
    }),
    { numRuns: 1000 },
  );
  t.pass();
});

test('compileNormal gives the same program for a policy asked again (kept by its text), each caller its own buffer', (t) => {
  const policy = normalize({ default: 'deny', rules: [parseRule('c 1:* rw', true), parseRule('c *:3 m', true), parseRule('b 8:0 r', true)] });
  const a = compileNormal(policy);
  const b = compileNormal(parsePolicy(serializePolicy(policy)));
  t.true(a.insns.equals(b.insns));
  t.is(a.key, b.key);
  a.insns.fill(0);
  t.false(a.insns.equals(compileNormal(policy).insns), "a caller's buffer is its own");
  t.true(b.insns.equals(compileNormal(policy).insns));
});
