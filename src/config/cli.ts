/**
 * config/cli: option helpers shared by the cgstepd and cgstep entry points.
 * Every option can also come from CGSTEP_<NAME> (command line wins); commander
 * shows the variable in --help. Bad values name the option (or variable).
 */
import { spawnSync } from 'node:child_process';
import { InvalidArgumentError, Option } from 'commander';
import { parseSize } from './size.js';

/** An option that also reads CGSTEP_<FLAG_IN_CAPS>. */
export function opt(flags: string, description: string): Option {
  const long = /--([a-z0-9-]+)/.exec(flags)![1];
  return new Option(flags, description).env(`CGSTEP_${long.replace(/-/g, '_').toUpperCase()}`);
}

export function intArg(what: string, min: number, max: number) {
  return (v: string): number => {
    if (!/^\d+$/.test(v.trim()) || Number(v) < min || Number(v) > max) throw new InvalidArgumentError(`${what} must be an integer from ${min} to ${max}`);
    return Number(v);
  };
}

/** Repeatable integer option; also accepts a comma list (for the environment form). */
export function intList(what: string) {
  const one = intArg(what, 0, 0xfffffffe);
  return (v: string, prev: number[] = []): number[] => [...prev, ...v.split(',').filter(Boolean).map(one)];
}

/** Repeatable string option; also accepts a ';'-separated list. */
export function strList(v: string, prev: string[] = []): string[] {
  return [...prev, ...v.split(';').map((s) => s.trim()).filter(Boolean)];
}

export function sizeArg(what: string) {
  return (v: string): number => {
    try {
      return parseSize(v, what);
    } catch (err) {
      throw new InvalidArgumentError((err as Error).message);
    }
  };
}

/** A file mode in octal (e.g. 0660 or 660); only permission bits. */
export function modeArg(v: string): number {
  if (!/^0?[0-7]{3}$/.test(v.trim())) throw new InvalidArgumentError('mode must be octal permission bits, e.g. 0660');
  return parseInt(v, 8);
}

/** A group as a gid or a name (looked up through NSS with getent, so LDAP/sssd groups work). */
export function groupArg(v: string): number {
  if (/^\d+$/.test(v.trim())) return intArg('gid', 0, 0xfffffffe)(v);
  const r = spawnSync('getent', ['group', v], { encoding: 'utf8' });
  const gid = r.status === 0 ? Number(r.stdout.split(':')[2]) : NaN;
  if (!Number.isInteger(gid)) throw new InvalidArgumentError(`no group named ${JSON.stringify(v)}`);
  return gid;
}
