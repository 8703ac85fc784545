/**
 * devices/compiler: rule set -> normal form -> BPF_PROG_TYPE_CGROUP_DEVICE
 * instructions. Pure: no I/O, no kernel.
 *
 * Normal form (order-independent, like runc's devices emulator): a list of
 * entries {pattern, masks}, where masks are the largest sets of access bits the
 * pattern's devices may ask for at once (none: no access; `r,w`: r or w, not
 * both), sorted most specific first, plus a default verdict. Its meaning is
 * first match: the first entry matching the device decides (allowed iff the
 * requested bits are a subset of one of its masks); no entry matches: the
 * default. How it is built from a RuleSet (rules.ts gives the semantics):
 *   1. the rules' patterns, closed under intersection (`c 1:*` and `c *:3` add
 *      `c 1:3`), so that the most specific entry matching a device is matched
 *      by every rule that matches the device, whatever their overlap;
 *   2. each entry's masks decided from the rules whose patterns contain it
 *      (every request rules.ts allows there, kept as its largest sets);
 *   3. `a *:*` folded into the default when it allows all or nothing;
 *   4. an entry dropped when the entry a device would fall through to (the most
 *      specific surviving superset, or the default) gives the same masks.
 * Program layout (systemd's bpf-devices.c / runc's devicefilter.go shape):
 *   prologue  r2 = type (low 16 bits of access_type), r3 = access bits (its high
 *             16), r4 = major, r5 = minor   (6 insns)
 *   search    only with TREE_MIN or more exact entries (b/c, exact major and
 *             minor): they come first and their keys are distinct, so a device
 *             matches at most one and that one is its first match. A binary
 *             search finds it instead of a walk:
 *               if r2 != 2 goto <b search or miss>; <c search>;
 *               [if r2 != 1 goto miss; <b search>]
 *             each a balanced search on the majors (if r4 > K goto right; ...
 *             if r4 != MAJ goto miss), then on that major's minors, down to
 *             leaves of up to TREE_LEAF keys: `if r5 == MIN goto <hit>` for all
 *             but the last, `if r5 != MIN goto miss; <access>` for the last. A
 *             hit goes to allow or deny for masks 7 and none, else to a shared
 *             access block per set of masks (after the search). A key that is the only value left by the tests above it
 *             (the verifier's bounds) is not tested. miss: reload r4 and r5 (so
 *             the verifier sees one state there, not one per leaf), then the
 *             remaining entries as below; with none, miss is the default block.
 *   per entry [if r2 != T goto next] [if r4 != MAJ goto next] [if r5 != MIN goto next]
 *             access: mask 7: goto allow | no mask: goto deny |
 *                     per mask: if r3 & ~mask goto <next mask, or deny>; goto allow
 *                     (requested ⊆ one mask)
 *   exits     the default's block first (the last entry falls into it), then the
 *             other one, each `r0 = 0|1; exit`; a jump to the very next insn
 *             and a block nobody jumps to are not emitted.
 * Every jump is forward, every instruction reachable, and every test has both
 * outcomes possible (interp.ts checks all three).
 * Must not touch: the kernel (controller.ts), rule syntax (rules.ts).
 */
import { AgentError } from '../errors.js';
import {
  ACC_ALL,
  DEV_BLOCK,
  DEV_CHAR,
  accessMask,
  formatRule,
  MAX_MAJOR,
  MAX_MINOR,
  maskToAccess,
  matches,
  specificity,
  validateRule,
  type DeviceNode,
  type DeviceRule,
  type DeviceType,
  type RuleSet,
  type Verdict,
  type Wild,
} from './rules.js';

export interface PolicyEntry {
  type: DeviceType;
  major: Wild;
  minor: Wild;
  /**
   * The largest sets of ACC_* bits one request for this pattern's devices may
   * ask for (none of them contains another; highest first). [] is no access.
   */
  masks: number[];
}

export interface NormalPolicy {
  default: Verdict;
  /** First match wins; most specific first. */
  entries: PolicyEntry[];
}

/** The kernel's bound on a jump offset (s16) is what limits a program here. */
export const MAX_INSNS = 32767;
/** Intersections considered while normalising, before redundant ones go. */
export const MAX_CELLS = 1 << 13;

/**
 * The patterns of one rule set as small integers (V8 keeps them unboxed), so
 * that normalising works on sets and maps of numbers rather than strings and
 * objects (a 4,096-rule set is tens of thousands of lookups). Each component
 * is a code: 0 for a wildcard ('a', '*'), else type b 1, c 2, and the rank of
 * the major (minor) among the rule set's distinct majors (minors), from 1.
 * key = type << (majorBits + minorBits) | major << minorBits | minor; numeric
 * order of keys is type, then major, then minor, wildcards first: within one
 * specificity, entryOrder's.
 */
class Keys {
  private readonly majors: number[] = [0];
  private readonly minors: number[] = [0];
  private readonly majorRank = new Map<number, number>();
  private readonly minorRank = new Map<number, number>();
  private readonly minorBits: number;
  private readonly typeShift: number;
  private readonly majorMask: number;
  private readonly minorMask: number;

  constructor(rules: readonly DeviceRule[]) {
    const ranks = (values: Set<number>, rank: Map<number, number>, list: number[]) => {
      for (const v of [...values].sort((x, y) => x - y)) rank.set(v, list.push(v) - 1);
    };
    ranks(new Set(rules.flatMap((r) => (r.major === '*' ? [] : [r.major]))), this.majorRank, this.majors);
    ranks(new Set(rules.flatMap((r) => (r.minor === '*' ? [] : [r.minor]))), this.minorRank, this.minors);
    const bits = (n: number) => Math.max(1, 32 - Math.clz32(n - 1));
    this.minorBits = bits(this.minors.length);
    const majorBits = bits(this.majors.length);
    this.typeShift = majorBits + this.minorBits;
    // Room for the type's 2 bits below 2^30 (a small integer): 4,096 majors and 65,536 minors.
    if (this.typeShift > 28) throw tooBig(`${this.minors.length - 1} distinct minor numbers (at most ${(1 << (28 - majorBits)) - 1} with ${this.majors.length - 1} majors)`);
    this.majorMask = (1 << majorBits) - 1;
    this.minorMask = (1 << this.minorBits) - 1;
  }

  of(p: { type: DeviceType; major: Wild; minor: Wild }): number {
    return this.compose(TYPES.indexOf(p.type), p.major === '*' ? 0 : this.majorRank.get(p.major)!, p.minor === '*' ? 0 : this.minorRank.get(p.minor)!);
  }
  compose(type: number, major: number, minor: number): number {
    return (type << this.typeShift) | (major << this.minorBits) | minor;
  }
  type(k: number): number {
    return k >>> this.typeShift;
  }
  major(k: number): number {
    return (k >>> this.minorBits) & this.majorMask;
  }
  minor(k: number): number {
    return k & this.minorMask;
  }
  /** Which components are exact: major 4, minor 2, type 1 (the same bits as specificity). */
  shape(k: number): number {
    return (this.major(k) ? 4 : 0) | (this.minor(k) ? 2 : 0) | (this.type(k) ? 1 : 0);
  }
  /** k with only the components in `sub` (shape bits) kept, the others wildcards. */
  project(k: number, sub: number): number {
    return this.compose(sub & 1 ? this.type(k) : 0, sub & 4 ? this.major(k) : 0, sub & 2 ? this.minor(k) : 0);
  }
  /** The intersection of two patterns that agree on the components both name. */
  meet(p: number, q: number): number {
    return this.compose(Math.max(this.type(p), this.type(q)), Math.max(this.major(p), this.major(q)), Math.max(this.minor(p), this.minor(q)));
  }
  entry(k: number, masks: number[]): PolicyEntry {
    const major = this.major(k);
    const minor = this.minor(k);
    return { type: TYPES[this.type(k)], major: major ? this.majors[major] : '*', minor: minor ? this.minors[minor] : '*', masks };
  }
  /**
   * Every pattern containing k (k itself first), most specific first, written
   * to `out`; returns how many. Enumerating the submasks of k's shape downward
   * orders them by specificity.
   */
  generalizations(k: number, out: number[]): number {
    const s = this.shape(k);
    let n = 0;
    for (let sub = s; ; sub = (sub - 1) & s) {
      out[n++] = this.project(k, sub);
      if (sub === 0) return n;
    }
  }
}

const TYPES: readonly DeviceType[] = ['a', 'b', 'c'];
/** `a *:*`. */
const ALL_KEY = 0;

function tooBig(what: string): AgentError {
  return new AgentError('E2BIG', `device rule set too large: ${what}`);
}

/**
 * Close a set of patterns under intersection (step 1). Two patterns of
 * comparable shapes are nested or disjoint, so only incomparable shapes meet,
 * and then only patterns that agree on the components both name: each cell
 * is looked up, by those components, among the cells of every other shape
 * (an index per shape and common components, kept up to date as cells are
 * added). A worklist meets every new cell with every cell there is, once, so
 * the cost follows the intersections that exist, not the rounds.
 */
function closeUnderIntersection(keys: Keys, start: Iterable<number>, maxCells = MAX_CELLS): Set<number> {
  const all = new Set<number>();
  const ofShape: number[][] = Array.from({ length: 8 }, () => []);
  const index = new Map<number, Map<number, number[]>>(); // shape * 8 + common -> projection -> cells
  const queue: number[] = [];
  const file = (m: Map<number, number[]>, k: number, common: number) => {
    const at = keys.project(k, common);
    const l = m.get(at);
    if (l) l.push(k);
    else m.set(at, [k]);
  };
  const add = (k: number) => {
    all.add(k);
    if (all.size > maxCells) throw tooBig(`more than ${maxCells} overlapping patterns (wildcard-major rules such as "c *:3" combined with many majors)`);
    const s = keys.shape(k);
    ofShape[s].push(k);
    for (let c = 0; c < 8; c++) {
      const m = index.get(s * 8 + c);
      if (m) file(m, k, c);
    }
    queue.push(k);
  };
  const lookup = (s: number, common: number): Map<number, number[]> => {
    let m = index.get(s * 8 + common);
    if (!m) {
      m = new Map();
      for (const q of ofShape[s]) file(m, q, common);
      index.set(s * 8 + common, m);
    }
    return m;
  };
  for (const k of start) if (!all.has(k)) add(k);
  for (let i = 0; i < queue.length; i++) {
    const p = queue[i];
    const sp = keys.shape(p);
    for (let s = 0; s < 8; s++) {
      const common = sp & s;
      if (common === sp || common === s || ofShape[s].length === 0) continue;
      // The cells met have shape sp | s, never s: this list does not grow meanwhile.
      for (const q of lookup(s, common).get(keys.project(p, common)) ?? []) {
        const x = keys.meet(p, q);
        if (!all.has(x)) add(x);
      }
    }
  }
  return all;
}

const entryOrder = (a: PolicyEntry, b: PolicyEntry): number => {
  const sa = specificity(a);
  const sb = specificity(b);
  if (sa !== sb) return sb - sa;
  if (a.type !== b.type) return a.type < b.type ? -1 : 1;
  if (a.major !== b.major) return (a.major === '*' ? -1 : (a.major as number)) - (b.major === '*' ? -1 : (b.major as number));
  return (a.minor === '*' ? -1 : (a.minor as number)) - (b.minor === '*' ? -1 : (b.minor as number));
};

/** Allow masks (never merged) and denied bits of the rules on one pattern. */
interface Named { allows: number[]; deny: number }

/** The rules of a rule set (validated) by pattern. */
function byPattern(rs: RuleSet): { keys: Keys; named: Map<number, Named> } {
  const rules = rs.rules.map(validateRule);
  const keys = new Keys(rules);
  const named = new Map<number, Named>();
  for (const r of rules) {
    const k = keys.of(r);
    const bits = accessMask(r.access);
    let n = named.get(k);
    if (!n) named.set(k, (n = { allows: [], deny: 0 }));
    if (!r.allow) n.deny |= bits;
    else if (!n.allows.includes(bits)) n.allows.push(bits);
  }
  return { keys, named };
}

/** The largest sets among `allowed` (a downward-closed family of requests), highest first. */
function maximal(allowed: number[]): number[] {
  return allowed.filter((a) => !allowed.some((b) => b !== a && (a & b) === a)).sort((x, y) => y - x);
}

/** maximal() of each family of requests 1..7 (bit r set: request r allowed), frozen and shared by the entries. */
const MAXIMAL: readonly number[][] = Array.from({ length: 256 }, (_, set) =>
  Object.freeze(maximal([1, 2, 3, 4, 5, 6, 7].filter((r) => set & (1 << r)))) as number[],
);

/** Scratch for resolveMasks (one call at a time): a pattern's generalizations, the allows and denies on them. */
const GEN: number[] = new Array(8).fill(0);
const ALLOW_BITS = new Int32Array(64);
const ALLOW_SPEC = new Int32Array(64);
const DENY_BITS = new Int32Array(8);
const DENY_SPEC = new Int32Array(8);

/**
 * Step 2: the masks of a cell, from the rules on its generalizations, by
 * rules.ts's semantics: a deny naming a requested bit wins unless a more
 * specific allow names all of them; else one allow must name them all (or
 * the default allows). Allocates nothing: it runs once per cell.
 */
function resolveMasks(keys: Keys, k: number, named: Map<number, Named>, dfltAllow: boolean): number[] {
  let na = 0;
  let nd = 0;
  const ng = keys.generalizations(k, GEN);
  for (let i = 0; i < ng; i++) {
    const n = named.get(GEN[i]);
    if (!n) continue;
    const spec = keys.shape(GEN[i]);
    for (const bits of n.allows) {
      ALLOW_BITS[na] = bits;
      ALLOW_SPEC[na++] = spec;
    }
    if (n.deny) {
      DENY_BITS[nd] = n.deny;
      DENY_SPEC[nd++] = spec;
    }
  }
  // Is req named whole by an allow more specific than spec?
  const covered = (spec: number, req: number): boolean => {
    for (let a = 0; a < na; a++) if (ALLOW_SPEC[a] > spec && (ALLOW_BITS[a] & req) === req) return true;
    return false;
  };
  let ok = 0;
  requests: for (let req = 1; req <= ACC_ALL; req++) {
    for (let d = 0; d < nd; d++) if ((DENY_BITS[d] & req) !== 0 && !covered(DENY_SPEC[d], req)) continue requests;
    if (dfltAllow || covered(-1, req)) ok |= 1 << req;
  }
  return MAXIMAL[ok];
}

const sameMasks = (a: number[], b: number[]): boolean => a === b || (a.length === b.length && a.every((m, i) => m === b[i]));
const ALL: number[] = [ACC_ALL];
const NONE: number[] = [];

/** Keys sorted by specificity (least specific first, or most with `mostFirst`), then by key. */
function bySpecificity(keys: Keys, ks: Iterable<number>, mostFirst: boolean): Int32Array {
  const byShape: number[][] = Array.from({ length: 8 }, () => []);
  let n = 0;
  for (const k of ks) {
    byShape[keys.shape(k)].push(k);
    n++;
  }
  // Int32Array: its elements stay small integers (a key read from a Float64Array would be boxed for each Map lookup).
  const out = new Int32Array(n);
  let at = 0;
  for (let j = 0; j < 8; j++) {
    const sorted = Int32Array.from(byShape[mostFirst ? 7 - j : j]).sort();
    out.set(sorted, at);
    at += sorted.length;
  }
  return out;
}

/** The order-independent normal form of a rule set (see the header). */
/**
 * E2BIG when the rules overlap into more than maxCells patterns: the first
 * step of normalize alone, so a bound below MAX_CELLS costs at most what it
 * allows (what a compile of them would cost grows with the patterns).
 */
export function checkOverlap(rs: RuleSet, maxCells: number): void {
  const { keys, named } = byPattern(rs);
  closeUnderIntersection(keys, named.keys(), maxCells);
}

export function normalize(rs: RuleSet): NormalPolicy {
  if (rs.default !== 'allow' && rs.default !== 'deny') throw new AgentError('EINVAL', `device policy default must be allow or deny, got ${JSON.stringify(rs.default)}`);
  const { keys, named } = byPattern(rs);
  const cells = closeUnderIntersection(keys, named.keys());
  const dfltAllow = rs.default === 'allow';

  // Step 3: the all-devices pattern is the base every device falls back to.
  const allMasks = resolveMasks(keys, ALL_KEY, named, dfltAllow);
  let dflt: Verdict;
  const survivors = new Map<number, number[]>();
  if (sameMasks(allMasks, ALL) || allMasks.length === 0) {
    dflt = allMasks.length ? 'allow' : 'deny';
  } else {
    // Partial: an entry matching everything; the fall-through after it is the allow block.
    dflt = 'allow';
    survivors.set(ALL_KEY, allMasks);
  }
  const base = survivors.get(ALL_KEY) ?? (dflt === 'allow' ? ALL : NONE);

  // Step 4: least specific first, so a cell's supersets (all less specific) are settled before it.
  const gen: number[] = new Array(8).fill(0);
  for (const c of bySpecificity(keys, cells, false)) {
    if (c === ALL_KEY) continue;
    const masks = resolveMasks(keys, c, named, dfltAllow);
    let fallback = base;
    const ng = keys.generalizations(c, gen);
    for (let i = 1; i < ng; i++) {
      const s = survivors.get(gen[i]);
      if (s) {
        fallback = s;
        break;
      }
    }
    if (!sameMasks(masks, fallback)) survivors.set(c, masks);
  }
  const entries: PolicyEntry[] = [];
  for (const k of bySpecificity(keys, survivors.keys(), true)) entries.push(keys.entry(k, survivors.get(k)!));
  return { default: dflt, entries };
}

/** First-match meaning of a normal form (what the emitted program computes). */
export function decideNormal(p: NormalPolicy, d: DeviceNode, access: number): boolean {
  for (const e of p.entries) {
    if (matches(e, d)) return e.masks.some((m) => (access & ~m) === 0);
  }
  return p.default === 'allow';
}

// ---- serialised form (the xattr beside a program) -------------------------

const HEADER = 'cgstep-devices 1';

/**
 * Text of a normal form, one entry a line, readable with getfattr:
 *   cgstep-devices 1
 *   default allow
 *   c 195:0 -        (no access)
 *   c 195:* rw
 *   c 42:1 r,w       (r or w, not both at once)
 */
export function serializePolicy(p: NormalPolicy): string {
  const lines = [HEADER, `default ${p.default}`];
  for (const e of p.entries) lines.push(formatEntry(e));
  return lines.join('\n') + '\n';
}

/** One entry as serializePolicy writes it: "c 195:* rw", "c 42:1 r,w", "c 195:0 -" (no access). */
export function formatEntry(e: PolicyEntry): string {
  return `${e.type} ${e.major}:${e.minor} ${e.masks.map(maskToAccess).join(',') || '-'}`;
}

/** Parse serializePolicy's text; EINVAL naming the bad line. The result is re-sorted canonically. */
export function parsePolicy(text: string): NormalPolicy {
  const lines = text.split('\n').filter((l) => l.length > 0);
  const bad = (i: number, why: string) => new AgentError('EINVAL', `stored device policy line ${i + 1} ${JSON.stringify(lines[i] ?? '')}: ${why}`);
  if (lines[0] !== HEADER) throw bad(0, `expected ${JSON.stringify(HEADER)}`);
  const d = /^default (allow|deny)$/.exec(lines[1] ?? '');
  if (!d) throw bad(1, 'expected "default allow" or "default deny"');
  const entries: PolicyEntry[] = [];
  const seen = new Set<string>();
  for (let i = 2; i < lines.length; i++) {
    const m = /^([abc]) (\*|\d+):(\*|\d+) (-|[rwm]+(?:,[rwm]+)*)$/.exec(lines[i]);
    if (!m) throw bad(i, 'expected "<a|b|c> <major>:<minor> <rwm[,rwm...]|->"');
    let r: DeviceRule;
    let masks: number[];
    try {
      r = validateRule({
        type: m[1] as DeviceType,
        major: m[2] === '*' ? '*' : Number(m[2]),
        minor: m[3] === '*' ? '*' : Number(m[3]),
        access: 'r',
        allow: true,
      });
      masks = m[4] === '-' ? [] : m[4].split(',').map((a) => accessMask(a));
    } catch (err) {
      throw bad(i, (err as Error).message);
    }
    if (!sameMasks(masks, maximal(masks))) throw bad(i, 'access sets must be distinct, none inside another, highest first');
    const e: PolicyEntry = { type: r.type, major: r.major, minor: r.minor, masks };
    const k = formatEntry({ ...e, masks: [] });
    if (seen.has(k)) throw bad(i, 'duplicate pattern');
    seen.add(k);
    entries.push(e);
  }
  return { default: d[1] as Verdict, entries: entries.sort(entryOrder) };
}

// ---- instruction encoding ------------------------------------------------

/** Opcodes used by the emitter (linux/bpf_common.h, linux/bpf.h). */
export const OP = {
  LDXW: 0x61, // BPF_LDX | BPF_MEM | BPF_W
  AND32K: 0x54, // BPF_ALU | BPF_AND | BPF_K
  RSH32K: 0x74, // BPF_ALU | BPF_RSH | BPF_K
  MOV64K: 0xb7, // BPF_ALU64 | BPF_MOV | BPF_K
  JNEK: 0x55, // BPF_JMP | BPF_JNE | BPF_K
  JEQK: 0x15, // BPF_JMP | BPF_JEQ | BPF_K
  JGTK: 0x25, // BPF_JMP | BPF_JGT | BPF_K (unsigned)
  JSETK: 0x45, // BPF_JMP | BPF_JSET | BPF_K
  JA: 0x05, // BPF_JMP | BPF_JA
  EXIT: 0x95, // BPF_JMP | BPF_EXIT
} as const;

export interface Insn { code: number; dst: number; src: number; off: number; imm: number }

export function encode(insns: Insn[]): Buffer {
  const buf = Buffer.alloc(insns.length * 8);
  insns.forEach((x, i) => {
    buf.writeUInt8(x.code, i * 8);
    buf.writeUInt8((x.dst & 0xf) | ((x.src & 0xf) << 4), i * 8 + 1);
    buf.writeInt16LE(x.off, i * 8 + 2);
    buf.writeInt32LE(x.imm, i * 8 + 4);
  });
  return buf;
}

export function decode(buf: Buffer): Insn[] {
  if (buf.length % 8 !== 0) throw new AgentError('EINVAL', `BPF program of ${buf.length} bytes is not a whole number of instructions`);
  const out: Insn[] = [];
  for (let i = 0; i < buf.length; i += 8) {
    const regs = buf.readUInt8(i + 1);
    out.push({ code: buf.readUInt8(i), dst: regs & 0xf, src: regs >> 4, off: buf.readInt16LE(i + 2), imm: buf.readInt32LE(i + 4) });
  }
  return out;
}

export interface Program {
  /** 8-byte instructions, ready for BPF_PROG_LOAD. */
  insns: Buffer;
  /** Comments for the disassembly: instruction index -> what starts there. */
  labels: Map<number, string>;
}

const R_TYPE = 2;
const R_ACCESS = 3;
const R_MAJOR = 4;
const R_MINOR = 5;

/**
 * At least this many exact entries (b/c with exact major and minor) are
 * emitted as a binary search instead of a chain. Counted in instructions run
 * (the interpreter's steps) the search is never worse, but the gap below 16 is
 * small: 15 exact entries on one major cost a miss 38-53 instructions in the
 * chain against 10-16, a hit 33 on average against 15. At the ~0.6 ns an
 * instruction that bench/devices.ts measures (256 entries in a chain: +320 ns
 * for 520), that is under 25 ns, about 1% of an open() of /dev/null. Below
 * it the chain, the simpler code to read and audit, is kept; the usual
 * policies (closed: 7 pseudo-devices, plus a node's GPUs) and the golden
 * programs stay there.
 */
export const TREE_MIN = 16;
/** Keys tested one by one at the bottom of the minor search. */
export const TREE_LEAF = 4;
/** What the verifier knows of a 32-bit field loaded from the context. */
const U32_MAX = 0xffffffff;

export interface EmitOptions {
  /** Exact entries from which the binary search is used (TREE_MIN; tests force it lower). */
  treeMin?: number;
}

const isExact = (e: PolicyEntry): boolean => e.type !== 'a' && e.major !== '*' && e.minor !== '*';
const accessText = (masks: number[]): string => masks.map(maskToAccess).join(' or ');
const entryText = (e: PolicyEntry): string => `${e.type} ${e.major}:${e.minor} ${e.masks.length ? `allow ${accessText(e.masks)}` : 'deny'}`;

/** Where a jump goes: the start of entry i (chain), an exit, or a mark placed later. */
type Target = { kind: 'next'; entry: number } | { kind: 'exit'; allow: boolean } | { kind: 'mark'; id: number };
type Sym = Insn & { target?: Target };
const ALLOW: Target = { kind: 'exit', allow: true };
const DENY: Target = { kind: 'exit', allow: false };

/**
 * The program being emitted: symbolic instructions whose jumps name a target,
 * resolved to offsets once every size is known (finish).
 */
class Emitter {
  readonly body: Sym[] = [];
  readonly labels = new Map<number, string>();
  /** Where entry i's code starts (chain entries only; entries.length: the default block). */
  readonly entryStart: number[];
  private readonly marks: number[] = [];

  constructor(private readonly p: NormalPolicy) {
    this.entryStart = new Array(p.entries.length + 1).fill(-1);
  }

  label(text: string, at = this.body.length): void {
    this.labels.set(at, this.labels.has(at) ? `${this.labels.get(at)}; ${text}` : text);
  }
  newMark(): number {
    return this.marks.push(-1) - 1;
  }
  place(id: number): void {
    this.marks[id] = this.body.length;
  }
  ins(code: number, dst: number, src: number, off: number, imm: number): void {
    // One object shape for all (thousands of them for a big rule set).
    this.body.push({ code, dst, src, off, imm, target: undefined });
  }
  jump(code: number, dst: number, imm: number, target: Target): void {
    this.body.push({ code, dst, src: 0, off: 0, imm, target });
  }

  /** Requested ⊆ one of masks: goto allow, else goto deny (one JA, or a JSET and JA per mask). */
  access(masks: number[]): void {
    if (masks.length === 0) return this.jump(OP.JA, 0, 0, DENY);
    if ((masks[0] & ACC_ALL) === ACC_ALL) return this.jump(OP.JA, 0, 0, ALLOW);
    masks.forEach((mask, i) => {
      const last = i === masks.length - 1;
      const next = last ? -1 : this.newMark();
      this.jump(OP.JSETK, R_ACCESS, ~mask & ACC_ALL, last ? DENY : { kind: 'mark', id: next });
      this.jump(OP.JA, 0, 0, ALLOW);
      if (!last) this.place(next);
    });
  }

  prologue(): void {
    this.label('prologue: r2 = type, r3 = access, r4 = major, r5 = minor');
    this.ins(OP.LDXW, R_TYPE, 1, 0, 0);
    this.ins(OP.AND32K, R_TYPE, 0, 0, 0xffff);
    this.ins(OP.LDXW, R_ACCESS, 1, 0, 0);
    this.ins(OP.RSH32K, R_ACCESS, 0, 0, 16);
    this.ins(OP.LDXW, R_MAJOR, 1, 4, 0);
    this.ins(OP.LDXW, R_MINOR, 1, 8, 0);
  }

  /** Entries from `from` on, one after another: type, major, minor tests, then the access check. */
  chain(from: number): void {
    for (let i = from; i < this.p.entries.length; i++) {
      const e = this.p.entries[i];
      this.entryStart[i] = this.body.length;
      this.label(entryText(e));
      const next: Target = { kind: 'next', entry: i + 1 };
      if (e.type !== 'a') this.jump(OP.JNEK, R_TYPE, e.type === 'b' ? DEV_BLOCK : DEV_CHAR, next);
      if (e.major !== '*') this.jump(OP.JNEK, R_MAJOR, e.major, next);
      if (e.minor !== '*') this.jump(OP.JNEK, R_MINOR, e.minor, next);
      this.access(e.masks);
    }
  }

  /**
   * The exits, then every jump resolved. A JA to the very next instruction
   * (only possible at the end: the last entry's, or the search's last, jump to
   * the default block) is dropped; a mark left pointing past the end now names
   * the default block, where the dropped JA went.
   */
  finish(): Program {
    const { body } = this;
    const dfltAllow = this.p.default === 'allow';
    const last = body[body.length - 1];
    if (last && last.code === OP.JA && last.target?.kind === 'exit' && last.target.allow === dfltAllow) body.pop();
    const defaultAt = body.length;
    for (let i = 0; i < this.marks.length; i++) this.marks[i] = Math.min(this.marks[i], defaultAt);
    this.entryStart[this.p.entries.length] = defaultAt;
    const otherUsed = body.some((x) => x.target?.kind === 'exit' && x.target.allow !== dfltAllow);
    const exitAt = new Map<boolean, number>([[dfltAllow, defaultAt], [!dfltAllow, defaultAt + 2]]);
    this.label(`${dfltAllow ? 'allow' : 'deny'} (default)`);
    this.ins(OP.MOV64K, 0, 0, 0, dfltAllow ? 1 : 0);
    this.ins(OP.EXIT, 0, 0, 0, 0);
    if (otherUsed) {
      this.label(dfltAllow ? 'deny' : 'allow');
      this.ins(OP.MOV64K, 0, 0, 0, dfltAllow ? 0 : 1);
      this.ins(OP.EXIT, 0, 0, 0, 0);
    }
    if (body.length > MAX_INSNS) throw tooBig(`${body.length} instructions (at most ${MAX_INSNS}); ${this.p.entries.length} entries after normalising`);
    const out: Insn[] = body.map((x, pc) => {
      if (!x.target) return { code: x.code, dst: x.dst, src: x.src, off: x.off, imm: x.imm };
      const t = x.target;
      const to = t.kind === 'next' ? this.entryStart[t.entry] : t.kind === 'mark' ? this.marks[t.id] : exitAt.get(t.allow)!;
      const off = to - pc - 1;
      if (to < 0 || off < 0 || off > 0x7fff) throw new AgentError('EINTERNAL', `device compiler: jump at ${pc} to ${to} out of range`);
      return { code: x.code, dst: x.dst, src: x.src, off, imm: x.imm };
    });
    return { insns: encode(out), labels: this.labels };
  }
}

type Group = { major: number; list: PolicyEntry[] };

/**
 * The binary search of the exact entries (layout in the header). Every test
 * in it has both outcomes possible for the verifier, which knows a register's
 * bounds [lo, hi] from the tests before it (JGT; since 6.8 also a JNE/JEQ
 * whose constant is a bound): a key that is the only value left is not
 * tested, it is known to match. (Its `goto miss` would be a branch never
 * taken; the kernel keeps that one, as miss is reached from elsewhere, but it
 * is an instruction run for nothing.)
 */
class Search {
  private readonly missMark: number;
  private readonly miss: Target;
  /** Access blocks shared by the hits: masks -> mark. */
  private readonly checks = new Map<string, { masks: number[]; id: number }>();

  constructor(private readonly em: Emitter, private readonly exact: PolicyEntry[]) {
    this.missMark = em.newMark();
    this.miss = { kind: 'mark', id: this.missMark };
  }

  private hit(masks: number[]): Target {
    if (masks.length === 0) return DENY;
    if ((masks[0] & ACC_ALL) === ACC_ALL) return ALLOW;
    const k = masks.join(',');
    if (!this.checks.has(k)) this.checks.set(k, { masks, id: this.em.newMark() });
    return { kind: 'mark', id: this.checks.get(k)!.id };
  }

  /** Above `leafMax` items, `if reg > k` (k the last key of the left half) jumps to the right half. */
  private bisect<T>(items: T[], key: (x: T) => number, reg: number, leafMax: number, lo: number, hi: number, leaf: (items: T[], lo: number, hi: number) => void): void {
    if (items.length <= leafMax) return leaf(items, lo, hi);
    const mid = Math.ceil(items.length / 2);
    const k = key(items[mid - 1]);
    const right = this.em.newMark();
    this.em.jump(OP.JGTK, reg, k, { kind: 'mark', id: right });
    this.bisect(items.slice(0, mid), key, reg, leafMax, lo, Math.min(hi, k), leaf);
    this.em.place(right);
    this.bisect(items.slice(mid), key, reg, leafMax, Math.max(lo, k + 1), hi, leaf);
  }

  private minorLeaf(list: PolicyEntry[], lo: number, hi: number): void {
    list.forEach((e, i) => {
      const k = e.minor as number;
      this.em.label(entryText(e));
      if (i < list.length - 1) {
        this.em.jump(OP.JEQK, R_MINOR, k, this.hit(e.masks));
        if (lo === k) lo++;
        if (hi === k) hi--;
      } else {
        if (lo !== hi) this.em.jump(OP.JNEK, R_MINOR, k, this.miss);
        this.em.access(e.masks);
      }
    });
  }

  private majorLeaf([g]: Group[], lo: number, hi: number): void {
    this.em.label(`${g.list[0].type} major ${g.major}: ${g.list.length} exact`);
    if (lo !== hi) this.em.jump(OP.JNEK, R_MAJOR, g.major, this.miss);
    this.bisect(g.list, (e) => e.minor as number, R_MINOR, TREE_LEAF, 0, U32_MAX, (l, a, b) => this.minorLeaf(l, a, b));
  }

  private groupsOf(t: 'b' | 'c'): Group[] {
    const out: Group[] = [];
    for (const e of this.exact) {
      if (e.type !== t) continue;
      const last = out[out.length - 1];
      if (last && last.major === e.major) last.list.push(e);
      else out.push({ major: e.major as number, list: [e] });
    }
    return out; // entryOrder sorted them by major, then minor
  }

  /** if r2 != 2 goto <b search or miss>; <c search>; [if r2 != 1 goto miss; <b search>]; shared checks; miss. */
  emit(haveRest: boolean): void {
    const em = this.em;
    const majors = (groups: Group[]) => this.bisect(groups, (g) => g.major, R_MAJOR, 1, 0, U32_MAX, (l, a, b) => this.majorLeaf(l, a, b));
    const count = (gs: Group[]) => gs.reduce((n, g) => n + g.list.length, 0);
    const cs = this.groupsOf('c');
    const bs = this.groupsOf('b');
    em.label(`binary search of the ${this.exact.length} exact entries: type, major, minor`);
    if (cs.length > 0) {
      em.label(`char devices: ${count(cs)} exact`);
      const toBlock = bs.length > 0 ? em.newMark() : -1;
      em.jump(OP.JNEK, R_TYPE, DEV_CHAR, toBlock >= 0 ? { kind: 'mark', id: toBlock } : this.miss);
      majors(cs);
      if (toBlock >= 0) em.place(toBlock);
    }
    if (bs.length > 0) {
      em.label(`block devices: ${count(bs)} exact`);
      em.jump(OP.JNEK, R_TYPE, DEV_BLOCK, this.miss);
      majors(bs);
    }
    for (const [k, { masks, id }] of [...this.checks].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))) {
      em.place(id);
      em.label(`exact entries allowing ${k.split(',').map((m) => maskToAccess(Number(m))).join(' or ')}: requested ⊆ allowed`);
      em.access(masks);
    }
    em.place(this.missMark);
    if (haveRest) {
      // Forget the bounds the search left on r4 and r5, so that every miss reaches
      // the other entries in one state: the verifier walks them once, not once
      // per leaf, and none of their tests looks decided.
      em.label('not an exact entry: reload r4 = major, r5 = minor');
      em.ins(OP.LDXW, R_MAJOR, 1, 4, 0);
      em.ins(OP.LDXW, R_MINOR, 1, 8, 0);
    }
  }
}

/** Emit the program for a normal form (layout in the header). */
export function emit(p: NormalPolicy, opts: EmitOptions = {}): Program {
  const em = new Emitter(p);
  if (p.entries.length > 0) em.prologue();
  // The exact entries are the most specific, so they come first, and their keys
  // are distinct: a device matches at most one, and when it does that one is the
  // first match. Searching for it instead of walking them keeps the meaning.
  let nExact = 0;
  while (nExact < p.entries.length && isExact(p.entries[nExact])) nExact++;
  const useTree = nExact > 0 && nExact >= (opts.treeMin ?? TREE_MIN);
  if (useTree) new Search(em, p.entries.slice(0, nExact)).emit(nExact < p.entries.length);
  em.chain(useTree ? nExact : 0);
  return em.finish();
}

// ---- compile with a small cache -------------------------------------------

export interface Compiled {
  policy: NormalPolicy;
  /** Fresh copy each call: callers may keep it. */
  insns: Buffer;
  labels: Map<number, string>;
  /** serializePolicy(policy): the cache key and the xattr value. */
  key: string;
}

const CACHE_SIZE = 64;
const cache = new Map<string, { policy: NormalPolicy; program: Program; key: string }>();

function inputKey(rs: RuleSet): string {
  const set = new Set(rs.rules.map((r) => `${r.allow ? '+' : '-'}${formatRule(r)}`));
  return `${rs.default}\n${[...set].sort().join('\n')}`;
}

/** Normalise and emit, cached per rule set (LRU of CACHE_SIZE normal forms). */
export function compile(rs: RuleSet): Compiled {
  const ik = inputKey(rs);
  let hit = cache.get(ik);
  if (hit) {
    cache.delete(ik); // refresh its place in the LRU order
  } else {
    const policy = normalize(rs);
    const key = serializePolicy(policy);
    // Two rule sets with the same normal form share one program.
    const same = [...cache.values()].find((v) => v.key === key);
    hit = { policy, program: same?.program ?? emit(policy), key };
  }
  cache.set(ik, hit);
  while (cache.size > CACHE_SIZE) cache.delete(cache.keys().next().value as string);
  return { policy: hit.policy, insns: Buffer.from(hit.program.insns), labels: hit.program.labels, key: hit.key };
}

/** Programs of normal forms, by their serialized text (LRU of CACHE_SIZE): stats checks every leaf's program against its policy. */
const normalCache = new Map<string, Program>();

/** The program of a normal form as it stands (a stored policy put back, or checked against its program). */
export function compileNormal(policy: NormalPolicy): Compiled {
  const key = serializePolicy(policy);
  let program = normalCache.get(key);
  if (program) normalCache.delete(key); // refresh its place in the LRU order
  else program = emit(policy);
  normalCache.set(key, program);
  while (normalCache.size > CACHE_SIZE) normalCache.delete(normalCache.keys().next().value as string);
  return { policy, insns: Buffer.from(program.insns), labels: program.labels, key };
}

/** Entries in the compile cache (tests). */
export function compileCacheSize(): number {
  return cache.size;
}
