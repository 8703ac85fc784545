/**
 * config/cgroupconf: Slurm's cgroup.conf, the subset cgstep acts on.
 *
 * Syntax as Slurm reads it: `Key=Value` per line, keys case-insensitive,
 * `#` comments, yes/no booleans, percents as plain numbers. Unknown keys are
 * returned as warnings; a bad value is an error naming the file and line.
 * Pure: parses text, reads no files but the one it is asked to load.
 */
import fs from 'node:fs';
import { ConfigError } from '../errors.js';

const HINT = "correct that line (keys and values as in Slurm's cgroup.conf(5))";

export interface CgroupConf {
  cgroupMountPoint?: string;
  ignoreSystemd: boolean;
  ignoreSystemdOnFailure: boolean;
  enableControllers: boolean;
  /** SystemdTimeout, milliseconds. */
  systemdTimeout: number;
  constrainCores: boolean;
  constrainRAMSpace: boolean;
  /** Percent of the allocation. */
  allowedRAMSpace: number;
  /** Percent of the node's RAM. */
  maxRAMPercent: number;
  /** MiB. */
  minRAMSpace: number;
  constrainSwapSpace: boolean;
  allowedSwapSpace: number;
  maxSwapPercent: number;
  constrainDevices: boolean;
  /** Keys that were set explicitly (lower-case), so "needed" controllers can be told from defaults. */
  explicit: ReadonlySet<string>;
}

/**
 * Defaults. Two differ from Slurm on purpose: ConstrainRAMSpace and ConstrainCores
 * default to yes, because a limit given in a request is meant to be enforced;
 * a cgroup.conf saying "no" turns them off.
 */
export function defaultCgroupConf(): CgroupConf {
  return {
    ignoreSystemd: false,
    ignoreSystemdOnFailure: false,
    enableControllers: false,
    systemdTimeout: 1000,
    constrainCores: true,
    constrainRAMSpace: true,
    allowedRAMSpace: 100,
    maxRAMPercent: 100,
    minRAMSpace: 30,
    constrainSwapSpace: false,
    allowedSwapSpace: 0,
    maxSwapPercent: 100,
    constrainDevices: true,
    explicit: new Set(),
  };
}

type Kind = 'bool' | 'percent' | 'uint' | 'path';
const KEYS: Record<string, [keyof CgroupConf, Kind]> = {
  cgroupmountpoint: ['cgroupMountPoint', 'path'],
  ignoresystemd: ['ignoreSystemd', 'bool'],
  ignoresystemdonfailure: ['ignoreSystemdOnFailure', 'bool'],
  enablecontrollers: ['enableControllers', 'bool'],
  cgroupautomount: ['enableControllers', 'bool'],
  systemdtimeout: ['systemdTimeout', 'uint'],
  constraincores: ['constrainCores', 'bool'],
  constrainramspace: ['constrainRAMSpace', 'bool'],
  allowedramspace: ['allowedRAMSpace', 'percent'],
  maxrampercent: ['maxRAMPercent', 'percent'],
  minramspace: ['minRAMSpace', 'uint'],
  constrainswapspace: ['constrainSwapSpace', 'bool'],
  allowedswapspace: ['allowedSwapSpace', 'percent'],
  maxswappercent: ['maxSwapPercent', 'percent'],
  constraindevices: ['constrainDevices', 'bool'],
};

/**
 * Keys Slurm (22.05 and its parser) knows that cgstep does not act on, and why:
 * each one set is reported once at start, never dropped silently.
 */
const UNSUPPORTED: Record<string, string> = {
  constrainkmemspace: 'cgroup v2 has no separate kernel-memory limit (memory.max counts it)',
  allowedkmemspace: 'cgroup v2 has no separate kernel-memory limit (memory.max counts it)',
  maxkmempercent: 'cgroup v2 has no separate kernel-memory limit (memory.max counts it)',
  minkmemspace: 'cgroup v2 has no separate kernel-memory limit (memory.max counts it)',
  memoryswappiness: 'cgroup v2 has no per-cgroup swappiness',
  alloweddevicesfile: 'cgroup v1 only; device rules come from requests and gres.conf',
  cgroupreleaseagentdir: 'cgroup v1 only (release agents); cgstep watches cgroup.events',
  memorylimitenforcement: 'an old Slurm option (no longer in Slurm 22.05)',
  memorylimitthreshold: 'an old Slurm option (no longer in Slurm 22.05)',
  signalchildrenprocesses: 'an old Slurm option (no longer in Slurm 22.05)',
};

export interface ParseResult { conf: CgroupConf; warnings: string[]; unsupported: string[] }

export function parseCgroupConf(text: string, source = 'cgroup.conf'): ParseResult {
  const conf = defaultCgroupConf();
  const explicit = new Set<string>();
  const warnings: string[] = [];
  const unsupported: string[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].replace(/#.*$/, '').trim();
    if (!line) continue;
    const where = `${source}:${i + 1}`;
    const eq = line.indexOf('=');
    if (eq <= 0) throw new ConfigError(`${where}: expected Key=Value, got ${JSON.stringify(line)}`, HINT);
    const key = line.slice(0, eq).trim().toLowerCase();
    const raw = line.slice(eq + 1).trim();
    const spec = KEYS[key];
    const name = line.slice(0, eq).trim();
    if (key === 'cgroupplugin') {
      // cgstep is a cgroup v2 implementation: v2 and autodetect are what it does.
      if (!['cgroup/v2', 'autodetect'].includes(raw.toLowerCase())) {
        unsupported.push(name);
        warnings.push(`${where}: ${name}=${raw} is not supported by cgstep (it drives cgroup v2 only); ignored`);
      }
      continue;
    }
    if (!spec) {
      if (key in UNSUPPORTED) {
        unsupported.push(name);
        warnings.push(`${where}: ${name} is not supported by cgstep (${UNSUPPORTED[key]}); ignored`);
      } else warnings.push(`${where}: unknown key ${name} ignored`);
      continue;
    }
    const [field, kind] = spec;
    (conf as unknown as Record<string, unknown>)[field] = parseValue(kind, raw, where, line.slice(0, eq).trim());
    explicit.add(field.toLowerCase());
  }
  conf.explicit = explicit;
  return { conf, warnings, unsupported };
}

function parseValue(kind: Kind, raw: string, where: string, key: string): boolean | number | string {
  const bad = (what: string) => new ConfigError(`${where}: ${key}=${raw}: expected ${what}`, HINT);
  switch (kind) {
    case 'bool': {
      const v = raw.toLowerCase();
      if (['yes', 'true', '1'].includes(v)) return true;
      if (['no', 'false', '0'].includes(v)) return false;
      throw bad('yes or no');
    }
    case 'percent': {
      const v = Number(raw.replace(/%$/, ''));
      if (!/^\d+(\.\d+)?%?$/.test(raw) || !Number.isFinite(v) || v < 0) throw bad('a non-negative percent');
      return v;
    }
    case 'uint': {
      if (!/^\d{1,15}$/.test(raw)) throw bad('a non-negative integer');
      return Number(raw);
    }
    case 'path':
      if (!raw.startsWith('/')) throw bad('an absolute path');
      return raw;
  }
}

export function loadCgroupConf(file: string): ParseResult {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? err}`, 'check the path given to --config (CGSTEP_CONFIG)');
  }
  return parseCgroupConf(text, file);
}
