/**
 * status: what `cgstep status` and sd_notify's STATUS= say about the agent,
 * built by a pure function from facts the agent gathers (statusOf), and the
 * list of what does not work as configured (degradedOf), in words an admin
 * can act on. No I/O here.
 */
import type { Active } from './backends/registry.js';
import type { DeviceSupport } from './devices/backend-types.js';
import type { ScopeState } from './scope/lifecycle.js';
import type { OrphanReport } from './steps/orphans.js';
import type { LayoutReport } from './steps/adopt.js';
import type { ConfigReport } from './config/report.js';

/** What status reports as it is read. */
interface Passed {
  version: string;
  protocol: string;
  pid: number;
  socket: string;
  devices: DeviceSupport;
  backends: Active[];
  jobs: number;
  steps: number;
  connections: number;
  requests: Record<string, number>;
}

export interface StatusFacts extends Passed {
  startedAt: number;
  now: number;
  scope: ScopeState;
  /** Whether the scope directory exists right now. */
  scopeExists: boolean;
  /** The scope's cgroup.controllers right now, or why it could not be read. */
  scopeControllersNow: string[] | Error;
  /** ConstrainDevices as configured. */
  constrainDevices: boolean;
  orphans: Readonly<OrphanReport & { at?: string }>;
  /** The last check of the adopted tree's layout. */
  layout: LayoutReport;
  /** Adopted directories whose layout could not be repaired, in words. */
  layoutProblems: string[];
  /** Files read, effective settings, controllers, device policy, gres files. */
  config?: ConfigReport;
}

export interface AgentStatus extends Passed {
  uptimeSec: number;
  scope: string;
  mode: ScopeState['mode'];
  adopted: boolean;
  infinityPid: number;
  controllers: ScopeState['controllers'];
  fallbackReason?: string;
  orphans: { removed: number; populated: string[]; at?: string };
  layout: { checkedAt: string | null; levels: number; repaired: number; failed: number };
  degraded: string[];
  config?: ConfigReport;
}

export function statusOf(f: StatusFacts): AgentStatus {
  const s = f.scope;
  return {
    version: f.version,
    protocol: f.protocol,
    pid: f.pid,
    uptimeSec: Math.round((f.now - f.startedAt) / 1000),
    socket: f.socket,
    scope: s.path,
    mode: s.mode,
    adopted: s.adopted,
    infinityPid: s.infinityPid,
    controllers: s.controllers,
    devices: f.devices,
    backends: f.backends,
    jobs: f.jobs,
    steps: f.steps,
    connections: f.connections,
    requests: f.requests,
    ...(s.fallbackReason ? { fallbackReason: s.fallbackReason } : {}),
    orphans: { removed: f.orphans.removed.length, populated: f.orphans.populated.map((p) => p.path), at: f.orphans.at },
    layout: { checkedAt: f.layout.at, levels: f.layout.levels, repaired: f.layout.repaired.length, failed: f.layout.failed.length },
    degraded: degradedOf(f),
    ...(f.config ? { config: f.config } : {}),
  };
}

export function degradedOf(f: StatusFacts): string[] {
  const s = f.scope;
  const out: string[] = [];
  if (!f.scopeExists) out.push(`scope directory ${s.path} is gone`);
  if (s.fallbackReason) out.push(`systemd unavailable, running in mkdir mode: ${s.fallbackReason}`);
  if (s.unitLost) out.push(s.unitLost);
  if (f.scopeControllersNow instanceof Error) out.push(`cannot read the scope's controllers: ${f.scopeControllersNow.message}`);
  else {
    const now = f.scopeControllersNow;
    const lost = s.controllers.enabled.filter((c) => !now.includes(c));
    if (lost.length) out.push(`controllers disappeared from the scope: ${lost.join(' ')}`);
  }
  // A missing controller is degraded only where its limits are silently dropped
  // (--ignore-missing-controllers); refused limits fail loudly, and the config
  // section of status names the missing controllers either way.
  if (f.config?.missingControllerLimits === 'skip') {
    for (const c of f.config.controllers.missing) out.push(`the ${c} controller that the Constrain* settings (cgroup.conf, or its defaults) need is not available: limits on it are skipped (NOT enforced)`);
  }
  if (f.constrainDevices && !f.devices.supported) out.push(`device control unavailable (devices/none): ${f.devices.reason}`);
  out.push(...(f.devices.problems ?? []));
  if (f.orphans.populated.length) out.push(`${f.orphans.populated.length} orphan cgroup(s) still hold processes`);
  const lp = f.layoutProblems;
  if (lp.length) out.push(...lp.slice(0, 20), ...(lp.length > 20 ? [`(+${lp.length - 20} more directories not repaired)`] : []));
  return out;
}
