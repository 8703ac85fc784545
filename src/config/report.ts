/**
 * config/report: the agent's whole configuration as an admin needs to see it
 * (`cgstep status`, and the log at start): which files were read, the
 * effective constrain settings, the controllers they need against those the
 * node has, what happens to a limit whose controller is missing, the default
 * device policy, and every gres device file with whether it exists. Pure but
 * for the `exists` check the caller passes in.
 */
import type { Logger } from 'pino';
import type { CgroupConf } from './cgroupconf.js';

export interface GresFile { name: string; index: number; file: string }

export interface ConfigReport {
  files: { cgroupConf: string | null; gresConf: string | null };
  constrain: {
    cores: boolean;
    ramSpace: boolean;
    swapSpace: boolean;
    devices: boolean;
    allowedRAMSpacePercent: number;
    maxRAMPercent: number;
    minRAMSpaceMiB: number;
    allowedSwapSpacePercent: number;
    maxSwapPercent: number;
    /** Keys set in cgroup.conf (the rest are defaults). */
    explicit: string[];
  };
  /** cgroup.conf keys that were set but are not supported (each warned once at start). */
  unsupportedKeys: string[];
  controllers: { available: string[]; required: string[]; missing: string[] };
  /** What a limit whose controller the node lacks gets: refused (ENOTSUP), or skipped and reported. */
  missingControllerLimits: 'refuse' | 'skip';
  devicePolicy: { constrainDevices: boolean; default: 'open' | 'closed' };
  gres: (GresFile & { exists: boolean })[];
  /** What one uid that is neither root nor an operator may own live (--max-user-jobs, --max-user-steps, --max-user-tasks). */
  userCaps?: { jobs: number; steps: number; tasks: number };
}

export interface ReportInput {
  configFile?: string;
  gresConf?: string;
  conf: CgroupConf;
  unsupportedKeys: string[];
  ignoreMissingControllers: boolean;
  devicePolicy: 'open' | 'closed';
  /** cgroup.controllers of the scope. */
  available: string[];
  gresFiles: GresFile[];
  exists: (file: string) => boolean;
  userCaps?: { jobs: number; steps: number; tasks: number };
}

/** Controllers the constrain settings need on every job (others only when a request asks: pids, cpu). */
export function requiredControllers(conf: CgroupConf): string[] {
  const out: string[] = [];
  if (conf.constrainCores) out.push('cpuset');
  if (conf.constrainRAMSpace || conf.constrainSwapSpace) out.push('memory');
  return out;
}

export function configReport(i: ReportInput): ConfigReport {
  const c = i.conf;
  const required = requiredControllers(c);
  return {
    files: { cgroupConf: i.configFile ?? null, gresConf: i.gresConf ?? null },
    constrain: {
      cores: c.constrainCores,
      ramSpace: c.constrainRAMSpace,
      swapSpace: c.constrainSwapSpace,
      devices: c.constrainDevices,
      allowedRAMSpacePercent: c.allowedRAMSpace,
      maxRAMPercent: c.maxRAMPercent,
      minRAMSpaceMiB: c.minRAMSpace,
      allowedSwapSpacePercent: c.allowedSwapSpace,
      maxSwapPercent: c.maxSwapPercent,
      explicit: [...c.explicit],
    },
    unsupportedKeys: i.unsupportedKeys,
    controllers: { available: i.available, required, missing: required.filter((x) => !i.available.includes(x)) },
    missingControllerLimits: i.ignoreMissingControllers ? 'skip' : 'refuse',
    devicePolicy: { constrainDevices: c.constrainDevices, default: i.devicePolicy },
    gres: i.gresFiles.map((g) => ({ ...g, exists: i.exists(g.file) })),
    ...(i.userCaps ? { userCaps: i.userCaps } : {}),
  };
}

/** The start-up log lines: what was read, and a warning for each setting the node cannot honour. */
export function logConfiguration(r: ConfigReport, log: Logger): void {
  log.info({ file: r.files.cgroupConf, constrain: r.constrain, missingControllerLimits: r.missingControllerLimits }, r.files.cgroupConf ? 'cgroup.conf loaded' : 'no cgroup.conf given (--config): defaults in force');
  for (const ctl of r.controllers.missing) {
    const keys = ctl === 'cpuset' ? 'ConstrainCores=yes' : 'ConstrainRAMSpace/ConstrainSwapSpace=yes';
    const then = r.missingControllerLimits === 'skip' ? 'such limits are skipped (--ignore-missing-controllers) and NOT enforced' : 'requests with such limits are refused (ENOTSUP); --ignore-missing-controllers accepts them unenforced';
    log.warn({ controller: ctl, available: r.controllers.available }, `${keys} but the ${ctl} controller is not available in the scope (a hybrid node?): ${then}`);
  }
  const missing = r.gres.filter((g) => !g.exists);
  if (missing.length) log.warn({ gresConf: r.files.gresConf, missing: missing.map((g) => g.file) }, `gres.conf names ${missing.length} of ${r.gres.length} device file(s) that do not exist: ${missing.map((g) => `${g.name}:${g.index} ${g.file}`).join(', ')}; device policies deny the numbers they had when last seen, and are refused for one never seen`);
}
