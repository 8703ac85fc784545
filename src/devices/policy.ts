/**
 * devices/policy: a DeviceRequest (devices/request.ts) plus the node's gres
 * inventory -> the RuleSet for one cgroup directory. Owns Slurm's policy and
 * the closed mode; stats device paths; never touches the kernel's BPF side
 * (controller.ts) nor the instruction format (compiler.ts).
 *
 *  open (default): everything allowed, except the node's gres devices not
 *      allocated here (denied rwm); allocated ones are allowed rwm. This is
 *      Slurm's ConstrainDevices policy.
 *  closed: only systemd's DevicePolicy=closed set (PSEUDO_DEVICES) and the
 *      allocated gres devices, plus explicit allows.
 *  Both: `allow` and `deny` rules are merged in, with the semantics of rules.ts
 *      (most specific wins, deny beats allow at equal specificity). Unallocated
 *      gres devices are denied with exact rules, so a broad allow such as
 *      `c 195:* rw` never opens another job's GPU; an exact allow of such a
 *      device is refused with EINVAL (it would be silently outranked), ask for
 *      it through gres instead.
 * Levels: the same function serves job, step and task directories. Programs on
 * nested directories all run (BPF_F_ALLOW_MULTI) and all must allow, so a
 * step's or task's policy can only narrow its job's.
 */
import type { Logger } from 'pino';
import { AgentError } from '../errors.js';
import type { DeviceRequest } from './request.js';
import type { GresInventory, GresUnit } from './gres.js';
import { parseRule, statDevice, type DeviceNode, type DeviceRule, type RuleSet } from './rules.js';
import { checkOverlap } from './compiler.js';

/**
 * What `closed` allows without being asked: systemd's DevicePolicy=closed list
 * (its bpf-devices.c allow_list_static): the pseudo-devices rwm, pts rw, and
 * its inaccessible nodes /run/systemd/inaccessible/{chr,blk}, which are the
 * device numbers 0:0 (as overlayfs whiteouts are; the kernel does not ask
 * the program about opening one, nor about mknod of a char 0:0).
 */
export const PSEUDO_DEVICES: readonly { path: string; rule: DeviceRule }[] = [
  { path: '/dev/null', rule: { type: 'c', major: 1, minor: 3, access: 'rwm', allow: true } },
  { path: '/dev/zero', rule: { type: 'c', major: 1, minor: 5, access: 'rwm', allow: true } },
  { path: '/dev/full', rule: { type: 'c', major: 1, minor: 7, access: 'rwm', allow: true } },
  { path: '/dev/random', rule: { type: 'c', major: 1, minor: 8, access: 'rwm', allow: true } },
  { path: '/dev/urandom', rule: { type: 'c', major: 1, minor: 9, access: 'rwm', allow: true } },
  { path: '/dev/tty', rule: { type: 'c', major: 5, minor: 0, access: 'rwm', allow: true } },
  { path: '/dev/ptmx', rule: { type: 'c', major: 5, minor: 2, access: 'rwm', allow: true } },
  { path: '/dev/pts/*', rule: { type: 'c', major: 136, minor: '*', access: 'rw', allow: true } },
  { path: '/run/systemd/inaccessible/chr', rule: { type: 'c', major: 0, minor: 0, access: 'rwm', allow: true } },
  { path: '/run/systemd/inaccessible/blk', rule: { type: 'b', major: 0, minor: 0, access: 'rwm', allow: true } },
];

export interface PolicyOptions {
  /** The node's gres.conf inventory; null or absent when none is configured. */
  inventory?: GresInventory | null;
  /** How device paths are resolved (tests pass a fake); statDevice by default. */
  stat?: (path: string) => DeviceNode;
  /** The numbers a gres file had when it was last seen (GresDeviceNodes.lastKnown), to deny a device whose node is gone. */
  lastKnown?: (path: string) => DeviceNode | undefined;
  log?: Logger;
}

const sameDev = (a: DeviceNode, b: DeviceNode) => a.type === b.type && a.major === b.major && a.minor === b.minor;
const devKey = (d: DeviceNode) => `${d.type} ${d.major}:${d.minor}`;

/** A device a request allocates, and the gres.conf entry or path it came from. */
export interface Allocated {
  dev: DeviceNode;
  path: string;
  /** "gpu:1" for a gres.conf unit, else the path as named. */
  gres: string;
}

/** The rule set a request asks for (see the header). Throws EINVAL / KernelError naming the bad input. */
export function buildRuleSet(req: DeviceRequest, opts: PolicyOptions = {}): RuleSet {
  return buildPolicy(req, opts).rules;
}

/** buildRuleSet, plus the devices the request allocates (to check them against the job's). */
export function buildPolicy(req: DeviceRequest, opts: PolicyOptions = {}): { rules: RuleSet; allocated: Allocated[] } {
  const stat = opts.stat ?? statDevice;
  const inv = opts.inventory ?? null;
  const mode = req.policy ?? 'open';
  const rules: DeviceRule[] = [];

  // Allocated gres: their files' devices.
  const allocated = new Map<string, Allocated>();
  const allocatedUnits = new Set<GresUnit>();
  for (const entry of req.gres ?? []) {
    let paths: string[];
    let name = entry;
    if (inv) {
      const u = inv.resolve(entry);
      allocatedUnits.add(u);
      paths = u.files;
      name = `${u.name}:${u.index}`;
    } else if (entry.startsWith('/')) {
      paths = [entry];
    } else {
      throw new AgentError('EINVAL', `gres ${JSON.stringify(entry)}: no gres.conf is loaded, so only absolute device paths can be allocated`);
    }
    for (const p of paths) {
      const dev = stat(p); // an allocated device we cannot resolve is an error: the job would lack it
      allocated.set(devKey(dev), { dev, path: p, gres: name });
    }
  }
  for (const { dev } of allocated.values()) rules.push({ ...dev, access: 'rwm', allow: true });

  // The node's other gres devices: denied, unless the same device is also allocated.
  const denied = new Map<string, { dev: DeviceNode; path: string; unit: GresUnit }>();
  for (const u of inv?.all() ?? []) {
    if (allocatedUnits.has(u)) continue;
    for (const p of u.files) {
      const dev = unallocatedDevice(u, p, stat, opts);
      if (allocated.has(devKey(dev))) continue;
      denied.set(devKey(dev), { dev, path: p, unit: u });
      rules.push({ ...dev, access: 'rwm', allow: false });
    }
  }

  if (mode === 'closed') for (const p of PSEUDO_DEVICES) rules.push({ ...p.rule });

  for (const text of req.allow ?? []) {
    const r = parseRule(text, true, { stat });
    if (r.major !== '*' && r.minor !== '*') {
      const { major, minor } = r;
      const hit = [...denied.values()].find((d) => (r.type === 'a' || r.type === d.dev.type) && sameDev(d.dev, { type: d.dev.type, major, minor }));
      if (hit) {
        throw new AgentError(
          'EINVAL',
          `device allow ${JSON.stringify(text)} names ${hit.path} (gres ${hit.unit.name}:${hit.unit.index}), which is not allocated here; allocate it through gres`,
        );
      }
    }
    rules.push(r);
  }
  for (const text of req.deny ?? []) rules.push(parseRule(text, false, { stat }));

  return { rules: { default: mode === 'closed' ? 'deny' : 'allow', rules }, allocated: [...allocated.values()] };
}


/**
 * The device an unallocated gres file stands for, to deny. A file that cannot
 * be stat'ed now (a driver reload removes and remakes its nodes) is denied by
 * the numbers it had when last seen: leaving it out would open the device to
 * the job the moment its node is back. A file never seen as a device refuses
 * the request (EIO): no policy is built that could not deny it.
 */
function unallocatedDevice(u: GresUnit, p: string, stat: (path: string) => DeviceNode, opts: PolicyOptions): DeviceNode {
  const gres = `${u.name}:${u.index}`;
  try {
    return stat(p);
  } catch (err) {
    const last = opts.lastKnown?.(p);
    if (last) {
      opts.log?.warn({ path: p, gres, err, denied: devKey(last) }, 'gres device not found; denied by the numbers it had when last seen');
      return last;
    }
    opts.log?.warn({ path: p, gres, err }, 'gres device not found and never seen: device policy refused');
    throw new AgentError('EIO', `gres ${gres} (${u.origin}): ${(err as Error).message}; a gres device the agent cannot stat cannot be denied, so no device policy is built until ${p} is back`);
  }
}

/**
 * E2BIG when a request's own allow and deny rules overlap into more than
 * maxCells patterns (checkOverlap): a bound on what compiling them can cost,
 * checked before anything is planned.
 */
export function checkRequestOverlap(req: DeviceRequest, maxCells: number): void {
  const rules = [...(req.allow ?? []).map((t) => parseRule(t, true)), ...(req.deny ?? []).map((t) => parseRule(t, false))];
  checkOverlap({ default: 'allow', rules }, maxCells);
}
