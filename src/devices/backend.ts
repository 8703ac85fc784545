/**
 * devices/backend: the devices/ebpf backend, the agent's face of src/devices.
 *
 * Turns a request's DeviceRequest into a rule set and its program (policy.ts,
 * with the node's gres.conf inventory and the agent's default mode) before
 * anything is made, and puts it on the directory through one DeviceController,
 * keeping what it replaced until the request is through. Decides the policy of
 * a job whose request names none (the default with its allocation) and refuses
 * a step whose gres its job's policy does not allow. Owns the choice of backend (the
 * probe) and the gres inventory's lifetime; never the tree's layout (src/steps
 * decides which directory gets a policy) nor BPF itself (controller.ts).
 *
 * Programs outlive the agent: they stay attached to their directories when it
 * stops or crashes, and a restarted agent finds them with BPF_PROG_QUERY
 * (describe) and replaces them on the next update. init() counts what it finds
 * so the log says what was kept.
 */
import os from 'node:os';
import type { Logger } from 'pino';
import type { Candidate } from '../backends/registry.js';
import type { DeviceRequest } from './request.js';
import type { DeviceLevel, PreparedDevices } from '../steps/tree.js';
import { AgentError } from '../errors.js';
import { compile, decideNormal, formatEntry, type Compiled, type NormalPolicy } from './compiler.js';
import { DeviceController } from './controller.js';
import { loadGresConf, type GresInventory } from './gres.js';
import { GresDeviceNodes } from './paths.js';
import { buildPolicy, type Allocated } from './policy.js';
import { ACC_READ, ACC_WRITE } from './rules.js';
import type { DeviceBackend, DeviceContext } from './backend-types.js';

/** What devices/ebpf needs beyond the common device context. */
export interface EbpfContext extends DeviceContext {
  /** Slurm's gres.conf (`--gres`); no inventory when absent. */
  gresConf?: string;
  /** gres.conf lines for this node: NodeName= matches this (default: the short host name). */
  nodeName?: string;
  /** The mode of a request that names none (`--device-policy`). */
  devicePolicy: 'open' | 'closed';
  log: Logger;
}

/** How `cgstep stats` shows a directory's device policy: program ids and readable rules. */
export interface DeviceView {
  progIds: number[];
  ours: number[];
  default?: 'allow' | 'deny';
  rules?: string[];
  consistent: boolean;
}

/** One inventory line per gres name for `cgstep status`: "gpu: 4 (/dev/nvidia0 ...)". */
function summarise(inv: GresInventory): string[] {
  return inv.names().map((n) => {
    const files = inv.units(n).flatMap((u) => u.files);
    return `${n}: ${inv.units(n).length} (${files.join(' ')})`;
  });
}

/** A request checked and compiled: the program, and the gres devices it allocates. */
interface Prepared extends PreparedDevices {
  compiled: Compiled;
  allocated: Allocated[];
}

/**
 * EPERM unless every device p allocates is usable (read and write) under each
 * ancestor's policy: a step can narrow its job's allocation, not widen it.
 */
function checkWithin(ctl: DeviceController, p: Prepared, ancestors: readonly (string | PreparedDevices)[]): void {
  for (const a of ancestors) {
    const policy: NormalPolicy | null = typeof a === 'string' ? ctl.readPolicy(a) : (a as Prepared).compiled.policy;
    if (!policy) continue;
    const outside = p.allocated.filter((x) => !decideNormal(policy, x.dev, RW));
    if (outside.length) {
      const names = outside.map((x) => (x.gres === x.path ? x.path : `${x.gres} (${x.path})`)).join(', ');
      throw new AgentError('EPERM', `gres ${names} not allocated to the job${typeof a === 'string' ? ` (${a})` : ''}; only root or an operator can widen the job's allocation (devices.set on the job)`);
    }
  }
}

const RW = ACC_READ | ACC_WRITE;

/** DevicePort.widen: the gres units the job's policy allows now, and req's (resolved, not compiled). */
function widen(ctl: DeviceController, inventory: GresInventory | null, allocatedOf: (r: DeviceRequest) => Allocated[], dir: string, req: DeviceRequest): DeviceRequest | null {
  const policy = ctl.readPolicy(dir);
  if (!policy) return null;
  const want = allocatedOf(req);
  if (want.every((x) => decideNormal(policy, x.dev, RW))) return null;
  const held = (inventory?.all() ?? [])
    .map((u) => `${u.name}:${u.index}`)
    .filter((g) => allocatedOf({ gres: [g] }).every((x) => decideNormal(policy, x.dev, RW)));
  return { gres: [...new Set([...held, ...want.map((x) => x.gres)])] };
}

/**
 * What a node without gres devices means for its jobs. Open: nothing is
 * denied, so every GPU is open to every job. Closed still confines (only
 * pseudo-devices and explicit allows), but no gres can be allocated by name.
 */
function unconfinedMeans(policy: 'open' | 'closed'): string {
  return policy === 'open'
    ? 'no gres device is denied, so every device is open to every job (--device-policy open)'
    : 'no gres can be allocated by name; jobs get the closed policy (--device-policy closed) without any gres device';
}

const IDENTITY = { type: 'devices/ebpf', name: 'eBPF cgroup device programs', version: '1.0' } as const;

export function ebpfDevices(ctl: DeviceController): Candidate<EbpfContext, DeviceBackend> {
  return {
    ...IDENTITY,
    usable: (c) => (!c.constrainDevices ? 'ConstrainDevices=no' : c.bpfUnavailable()),
    reason: (c) => `ConstrainDevices=yes${c.devicesRequired ? '' : ' (the default: no cgroup.conf sets it)'} and BPF device programs work here`,
    create: (c) => {
      let inventory: GresInventory | null = null;
      let nodes: GresDeviceNodes | null = null;
      let gres: string[] = [];
      let problems: string[] = [];
      const probe = ctl.probe();
      const build = (req: DeviceRequest) => buildPolicy({ ...req, policy: req.policy ?? c.devicePolicy }, { inventory, log: c.log, ...(nodes ? { stat: nodes.stat, lastKnown: nodes.lastKnown } : {}) });
      const backend: DeviceBackend = {
        ...IDENTITY,
        get support() {
          return { supported: probe.supported, replace: probe.replace, ...(probe.reason ? { reason: probe.reason } : {}), defaultPolicy: c.devicePolicy, gres, constrainDevices: true, everyJob: backend.jobDefault(undefined) !== null, ...(problems.length ? { problems } : {}) };
        },
        enforcing: true,
        prepare(req: DeviceRequest, level: DeviceLevel): Prepared {
          const { rules, allocated } = build(req);
          return { level, compiled: compile(rules), allocated };
        },
        jobDefault(allocation) {
          // Open with no gres on the node confines nothing: no program then.
          if (!inventory?.all().length && c.devicePolicy === 'open') return null;
          return { gres: [...(allocation ?? [])] };
        },
        checkWithin: (p, ancestors) => checkWithin(ctl, p as Prepared, ancestors),
        widen: (dir, req) => widen(ctl, inventory, (r) => build(r).allocated, dir, req),
        apply(dir: string, prepared: PreparedDevices, restorable: boolean) {
          const p = prepared as Prepared;
          const held = restorable ? ctl.hold(dir) : null;
          let r;
          try {
            r = ctl.apply(dir, p.compiled, { fresh: !restorable });
          } catch (err) {
            if (held) ctl.release(held);
            throw err;
          }
          // The controller logs the load, attach and replace (the audit trail); this adds the level.
          if (!r.unchanged) c.log.debug({ dir, level: p.level, progId: r.progId, entries: r.policy.entries.length, default: r.policy.default }, 'device policy in force');
          if (!held) return { progId: r.progId };
          return { progId: r.progId, undo: () => ctl.restore(dir, held), done: () => ctl.release(held) };
        },
        describe(dir: string): DeviceView {
          const d = ctl.describe(dir);
          const view: DeviceView = { progIds: d.progIds, ours: d.ours, consistent: d.consistent };
          if (d.policy) {
            view.default = d.policy.default;
            view.rules = d.policy.entries.map(formatEntry);
          }
          return view;
        },
        init: async () => {
          if (c.gresConf) {
            inventory = loadGresConf(c.gresConf, c.nodeName ?? os.hostname().split('.')[0], c.log);
            gres = summarise(inventory);
            problems = inventory.unconfined.map((p) => `${p}: ${unconfinedMeans(c.devicePolicy)}`);
            nodes = new GresDeviceNodes(inventory.all().flatMap((u) => u.files));
            await nodes.refresh();
            c.log.info({ gresConf: c.gresConf, gres }, 'gres.conf loaded');
          }
        },
        fini: async () => {},
      };
      return backend;
    },
  };
}
