/**
 * devices/rules: the device rule type, its text syntax, and the reference
 * semantics every other part of src/devices must agree with.
 *
 * Owns parsing ("c 195:* rw", "a", "/dev/nvidia0 rw") and `decide()`, the
 * order-independent meaning of a rule set. Touches the filesystem only to stat
 * a device path named in a rule; never the kernel's BPF side.
 *
 * Semantics (a RuleSet is a default verdict plus rules; rule order never matters),
 * those of the kernel's cgroup v1 device controller and of crun and systemd
 * for allow rules, with denies ranked by specificity:
 *  - A rule matches a device when its type is `a` or equals the device's type,
 *    and its major and minor are `*` or equal the device's.
 *  - Specificity: exact major 4, exact minor 2, exact type 1, summed. So
 *    `c 1:3` (7) > `a 1:3` (6) > `c 1:*` (5) > `a 1:*` (4) > `c *:3` (3) >
 *    `a *:3` (2) > `c *:*` (1) > `a *:*` (0).
 *  - A request (a set of access bits r, w, m) is denied when a matching deny
 *    rule names any of its bits, unless a matching allow rule more specific
 *    than that deny names every bit of the request.
 *  - Otherwise it is allowed when one matching allow rule names every bit it
 *    asks for (bits are never added up from two allow rules: `c 1:3 r` and
 *    `c 1:* w` allow O_RDONLY and O_WRONLY of 1:3, not O_RDWR), or when the
 *    default is allow.
 *  - A request with no bits (access(F_OK), or X_OK, on a device node) is allowed
 *    when a request for one of r, w, m alone would be: a device the process may
 *    use in some way is visible, one it may not use at all is not.
 * Two allow rules for the same device are not merged into one (runc's
 * emulator merges them; cgroup v1, crun and systemd do not).
 */
import fs from 'node:fs';
import { AgentError, fromNodeError } from '../errors.js';

export type DeviceType = 'a' | 'b' | 'c';
export type Wild = number | '*';

export interface DeviceRule {
  type: DeviceType;
  major: Wild;
  minor: Wild;
  /** Non-empty subset of "rwm", canonical order r, w, m. */
  access: string;
  allow: boolean;
}

export type Verdict = 'allow' | 'deny';

export interface RuleSet {
  /** What a bit no rule names gets. */
  default: Verdict;
  rules: DeviceRule[];
}

/** A device node as the kernel names it to a device program. */
export interface DeviceNode {
  type: 'b' | 'c';
  major: number;
  minor: number;
}

/** Access bits as in bpf_cgroup_dev_ctx (BPF_DEVCG_ACC_*). */
export const ACC_MKNOD = 1;
export const ACC_READ = 2;
export const ACC_WRITE = 4;
export const ACC_ALL = 7;
/** Device types as in bpf_cgroup_dev_ctx (BPF_DEVCG_DEV_*). */
export const DEV_BLOCK = 1;
export const DEV_CHAR = 2;

/** Largest numbers the kernel's dev_t carries (MINORBITS 20, 12 bits of major). */
export const MAX_MAJOR = 0xfff;
export const MAX_MINOR = 0xfffff;

const BIT_OF: Record<string, number> = { r: ACC_READ, w: ACC_WRITE, m: ACC_MKNOD };

function einval(message: string): AgentError {
  return new AgentError('EINVAL', message);
}

/** "rw" -> ACC_READ|ACC_WRITE. Throws EINVAL on anything but a non-empty subset of rwm. */
export function accessMask(access: string, context = access): number {
  if (access.length === 0) throw einval(`device rule ${JSON.stringify(context)}: access must be a non-empty subset of rwm`);
  let mask = 0;
  for (const ch of access) {
    const bit = BIT_OF[ch];
    if (bit === undefined) throw einval(`device rule ${JSON.stringify(context)}: access ${JSON.stringify(access)} may only use the letters r, w, m`);
    if (mask & bit) throw einval(`device rule ${JSON.stringify(context)}: access ${JSON.stringify(access)} names ${ch} twice`);
    mask |= bit;
  }
  return mask;
}

/** ACC bits -> "rwm" letters in canonical order ("" for 0). */
export function maskToAccess(mask: number): string {
  return (mask & ACC_READ ? 'r' : '') + (mask & ACC_WRITE ? 'w' : '') + (mask & ACC_MKNOD ? 'm' : '');
}

/** "c 195:* rw" for a rule (without allow/deny). */
export function formatRule(r: Pick<DeviceRule, 'type' | 'major' | 'minor' | 'access'>): string {
  return `${r.type} ${r.major}:${r.minor} ${r.access}`;
}

/** Specificity of a pattern: exact major 4 + exact minor 2 + exact type 1. */
export function specificity(p: { type: DeviceType; major: Wild; minor: Wild }): number {
  return (p.major !== '*' ? 4 : 0) + (p.minor !== '*' ? 2 : 0) + (p.type !== 'a' ? 1 : 0);
}

export function matches(p: { type: DeviceType; major: Wild; minor: Wild }, d: DeviceNode): boolean {
  return (p.type === 'a' || p.type === d.type) && (p.major === '*' || p.major === d.major) && (p.minor === '*' || p.minor === d.minor);
}

function parseNumber(s: string, max: number, what: string, text: string): Wild {
  if (s === '*') return '*';
  if (!/^(0|[1-9][0-9]{0,7})$/.test(s)) throw einval(`device rule ${JSON.stringify(text)}: ${what} must be a decimal number or *, got ${JSON.stringify(s)}`);
  const n = Number(s);
  if (n > max) throw einval(`device rule ${JSON.stringify(text)}: ${what} ${n} is out of range (at most ${max})`);
  return n;
}

/** The device node behind a path (symlinks followed); EINVAL when it is not one. */
export function statDevice(path: string): DeviceNode {
  let st: fs.BigIntStats;
  try {
    st = fs.statSync(path, { bigint: true });
  } catch (err) {
    throw fromNodeError('stat', path, err);
  }
  const type = st.isCharacterDevice() ? 'c' : st.isBlockDevice() ? 'b' : null;
  if (!type) throw einval(`${path} is not a character or block device`);
  return { type, ...splitDev(st.rdev) };
}

/** glibc's major()/minor() of a dev_t. */
export function splitDev(dev: bigint): { major: number; minor: number } {
  const major = Number(((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn & 0xffffffffn));
  const minor = Number((dev & 0xffn) | ((dev >> 12n) & ~0xffn & 0xffffffffn));
  return { major, minor };
}

export interface ParseOptions {
  /** How a device path is resolved (tests pass a fake); statDevice by default. */
  stat?: (path: string) => DeviceNode;
}

/**
 * Parse one rule. Forms:
 *   "<type> <major>:<minor> [access]"  type a|b|c, numbers or *, access default rwm
 *   "a [access]"                        all devices (cgroup v1's "a")
 *   "/dev/path [access]"                the device node at that path, by stat
 * Whitespace is free; access defaults to "rwm". Throws EINVAL naming the text.
 */
export function parseRule(text: string, allow: boolean, opts: ParseOptions = {}): DeviceRule {
  if (typeof text !== 'string') throw einval(`device rule must be a string, got ${typeof text}`);
  const words = text.trim().split(/\s+/).filter((w) => w.length > 0);
  if (words.length === 0) throw einval(`device rule ${JSON.stringify(text)} is empty`);
  const head = words[0];
  if (head.startsWith('/')) {
    if (words.length > 2) throw einval(`device rule ${JSON.stringify(text)}: expected "<path> [access]"`);
    const access = words[1] ?? 'rwm';
    const mask = accessMask(access, text);
    const node = (opts.stat ?? statDevice)(head);
    return { type: node.type, major: node.major, minor: node.minor, access: maskToAccess(mask), allow };
  }
  if (head !== 'a' && head !== 'b' && head !== 'c') {
    throw einval(`device rule ${JSON.stringify(text)}: expected "<a|b|c> <major|*>:<minor|*> [rwm]" or an absolute device path`);
  }
  let major: Wild = '*';
  let minor: Wild = '*';
  let rest = words.slice(1);
  if (rest.length > 0 && rest[0].includes(':')) {
    const [ma, mi, ...extra] = rest[0].split(':');
    if (extra.length > 0) throw einval(`device rule ${JSON.stringify(text)}: expected <major>:<minor>, got ${JSON.stringify(rest[0])}`);
    major = parseNumber(ma, MAX_MAJOR, 'major', text);
    minor = parseNumber(mi, MAX_MINOR, 'minor', text);
    rest = rest.slice(1);
  } else if (head !== 'a') {
    throw einval(`device rule ${JSON.stringify(text)}: type ${head} needs <major>:<minor> (use * for any)`);
  }
  if (rest.length > 1) throw einval(`device rule ${JSON.stringify(text)}: unexpected ${JSON.stringify(rest.slice(1).join(' '))}`);
  const mask = accessMask(rest[0] ?? 'rwm', text);
  return { type: head, major, minor, access: maskToAccess(mask), allow };
}

/** Check a rule built in code (not parsed): the same limits as parseRule. */
export function validateRule(r: DeviceRule): DeviceRule {
  const text = formatRule(r);
  if (r.type !== 'a' && r.type !== 'b' && r.type !== 'c') throw einval(`device rule ${JSON.stringify(text)}: type must be a, b or c`);
  for (const [v, max, what] of [[r.major, MAX_MAJOR, 'major'], [r.minor, MAX_MINOR, 'minor']] as const) {
    if (v !== '*' && !(Number.isInteger(v) && v >= 0 && v <= max)) throw einval(`device rule ${JSON.stringify(text)}: ${what} must be * or an integer from 0 to ${max}`);
  }
  if (typeof r.allow !== 'boolean') throw einval(`device rule ${JSON.stringify(text)}: allow must be a boolean`);
  return { type: r.type, major: r.major, minor: r.minor, access: maskToAccess(accessMask(r.access, text)), allow: r.allow };
}

/**
 * The reference semantics: may a process open/mknod `d` asking for `access`
 * (ACC_* bits; 0 for an existence check)? Slow and obvious on purpose: tests
 * compare the compiled program against it.
 */
export function decide(rs: RuleSet, d: DeviceNode, access: number): boolean {
  if ((access & ~ACC_ALL) !== 0) throw einval(`access bits ${access} outside rwm`);
  if (access === 0) return [ACC_READ, ACC_WRITE, ACC_MKNOD].some((b) => decide(rs, d, b));
  const here = rs.rules.filter((r) => matches(r, d)).map((r) => ({ allow: r.allow, bits: accessMask(r.access), spec: specificity(r) }));
  const covers = (r: { allow: boolean; bits: number }) => r.allow && (r.bits & access) === access;
  for (const deny of here) {
    if (deny.allow || (deny.bits & access) === 0) continue;
    if (!here.some((a) => covers(a) && a.spec > deny.spec)) return false;
  }
  return rs.default === 'allow' || here.some(covers);
}
