/**
 * devices/backend: the devices/ebpf backend, the agent's face of src/devices.
 *
 * Turns a request's DeviceRequest into a rule set (policy.ts, with the node's
 * gres.conf inventory and the agent's default mode) and puts its program on
 * the directory through one DeviceController. Owns the choice of backend (the
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
import type { DeviceLevel } from '../steps/tree.js';
import { formatEntry } from './compiler.js';
import { DeviceController } from './controller.js';
import { loadGresConf, type GresInventory } from './gres.js';
import { buildRuleSet } from './policy.js';
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

const IDENTITY = { type: 'devices/ebpf', name: 'eBPF cgroup device programs', version: '1.0' } as const;

export function ebpfDevices(ctl: DeviceController): Candidate<EbpfContext, DeviceBackend> {
  return {
    ...IDENTITY,
    usable: (c) => (!c.constrainDevices ? 'ConstrainDevices=no' : c.bpfUnavailable()),
    reason: () => 'ConstrainDevices=yes and BPF device programs work here',
    create: (c) => {
      let inventory: GresInventory | null = null;
      let gres: string[] = [];
      const probe = ctl.probe();
      const backend: DeviceBackend = {
        ...IDENTITY,
        get support() {
          return { supported: probe.supported, replace: probe.replace, ...(probe.reason ? { reason: probe.reason } : {}), defaultPolicy: c.devicePolicy, gres };
        },
        enforcing: true,
        apply(dir: string, req: DeviceRequest, level: DeviceLevel) {
          const rules = buildRuleSet({ ...req, policy: req.policy ?? c.devicePolicy }, { inventory, log: c.log });
          const r = ctl.apply(dir, rules);
          // The controller logs the load, attach and replace (the audit trail); this adds the level.
          if (!r.unchanged) c.log.debug({ dir, level, progId: r.progId, entries: r.policy.entries.length, default: r.policy.default }, 'device policy in force');
          return { progId: r.progId };
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
            c.log.info({ gresConf: c.gresConf, gres }, 'gres.conf loaded');
          }
        },
        fini: async () => {},
      };
      return backend;
    },
  };
}
