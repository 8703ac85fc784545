/**
 * test/devices/cases: the rule sets whose programs are pinned byte for byte in
 * golden/ (compiler.test.ts) and loaded into the kernel (kernel.test.ts).
 */
import fc from 'fast-check';
import { PSEUDO_DEVICES, parseRule, type RuleSet } from '../../src/devices/index.js';

const r = (dflt: 'allow' | 'deny', ...texts: string[]): RuleSet => ({
  default: dflt,
  rules: texts.map((s) => (s.startsWith('-') ? parseRule(s.slice(1), false) : parseRule(s, true))),
});

export interface GoldenCase { name: string; why: string; rules: RuleSet }

export const GOLDEN_CASES: GoldenCase[] = [
  { name: 'empty-allow', why: 'no rules, default allow: r0 = 1, nothing else', rules: r('allow') },
  { name: 'empty-deny', why: 'no rules, default deny', rules: r('deny') },
  { name: 'redundant', why: 'an allow under default allow changes nothing and is dropped', rules: r('allow', 'c 195:0 rwm', 'c 195:* rw') },
  { name: 'slurm-open', why: "Slurm's policy: 4 GPUs, 0 and 2 allocated, the others denied", rules: r('allow', 'c 195:0 rwm', '-c 195:1 rwm', 'c 195:2 rwm', '-c 195:3 rwm') },
  { name: 'closed-pseudo', why: 'closed mode: only the pseudo-devices', rules: { default: 'deny', rules: PSEUDO_DEVICES.map((p) => p.rule) } },
  { name: 'read-only-block', why: 'partial masks: requested ⊆ allowed via JSET', rules: r('deny', 'b 8:0 r', 'c 1:3 rwm', 'b 8:* m') },
  { name: 'deny-all-fold', why: '"a *:* rwm" deny folds into the default', rules: r('allow', '-a *:* rwm', 'c 1:* rw') },
  { name: 'all-partial', why: '"a *:* r": a partial catch-all entry stays, last, with no tests', rules: r('deny', 'a *:* r', '-c 195:* r') },
  { name: 'overlap-closure', why: '"c 1:*" and "c *:3" overlap: their intersection c 1:3 becomes an entry', rules: r('deny', 'c 1:* r', 'c *:3 w', '-c *:3 r') },
  { name: 'type-a-numbers', why: '"a 8:*" covers b and c of major 8; "c *:*" deny is less specific', rules: r('allow', '-c *:* w', 'a 8:* rw') },
  { name: 'deny-wins-tie', why: 'allow and deny of the same bit on one pattern: deny wins', rules: r('allow', 'c 1:3 r', '-c 1:3 r') },
  { name: 'mknod-only', why: 'deny only m on all GPUs', rules: r('allow', '-c 195:* m') },
  {
    name: 'nvidia-closed',
    why: 'closed mode plus nvidiactl/modeset/uvm, GPU 0 of 4 allocated',
    rules: {
      default: 'deny',
      rules: [
        ...PSEUDO_DEVICES.map((p) => p.rule),
        ...r('deny', 'c 195:255 rw', 'c 195:254 rw', 'c 508:* rw', 'c 195:0 rwm', '-c 195:1 rwm', '-c 195:2 rwm', '-c 195:3 rwm').rules,
      ],
    },
  },
  {
    name: 'tree-gpu-node',
    why: 'closed mode on a GPU node, GPUs 0-1 of 8 allocated, a block device and /dev/net/tun: 16 exact entries (TREE_MIN) become a binary search on type, major, minor; the wildcards and the a-typed entry stay a chain after it',
    rules: {
      default: 'deny',
      rules: [
        ...PSEUDO_DEVICES.map((p) => p.rule),
        ...r('deny', 'c 195:* rw', 'c 195:0 rwm', 'c 195:1 rwm', '-c 195:2', '-c 195:3', '-c 195:4', '-c 195:5', '-c 195:6', '-c 195:7', 'b 7:0 r', 'a 10:200 rw').rules,
      ],
    },
  },
];

/**
 * fast-check rules for the searched layout (16+ exact entries): exact rules
 * with dense keys (runs of neighbours, minor 0, a few majors, GPU-like 190-200)
 * and sparse ones, and wildcard / a-typed rules over the same numbers.
 */
export function searchRuleArbs() {
  const access = fc.subarray(['r', 'w', 'm'], { minLength: 1 }).map((a) => a.join(''));
  const exactRule = fc.record({
    type: fc.constantFrom('b' as const, 'c' as const, 'c' as const),
    major: fc.oneof(fc.integer({ min: 0, max: 5 }), fc.integer({ min: 190, max: 200 }), fc.integer({ min: 0, max: 4095 })),
    minor: fc.oneof(fc.integer({ min: 0, max: 40 }), fc.integer({ min: 0, max: 0xfffff })),
    access,
    allow: fc.boolean(),
  });
  const num = fc.oneof(fc.constant('*' as const), fc.integer({ min: 0, max: 5 }), fc.integer({ min: 190, max: 200 }));
  const wildRule = fc.record({ type: fc.constantFrom('a' as const, 'b' as const, 'c' as const), major: num, minor: fc.oneof(num, fc.integer({ min: 0, max: 40 })), access, allow: fc.boolean() });
  return { exactRule, wildRule };
}
