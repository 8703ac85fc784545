/**
 * config/cli: option helpers shared by the cgstepd and cgstep entry points.
 * Options marked with opt() can also come from CGSTEP_<NAME> (command line wins);
 * commander shows the variable in --help. Bad values name the option (or variable).
 *
 * EnvCommand replaces commander's reading of the environment in two places
 * where it surprises admins: a value-less flag is set by its variable only when
 * the value says yes (commander sets it for any value, so CGSTEP_JSON=0 meant
 * JSON), and an empty variable counts as unset (CGSTEP_SOCKET= is not a
 * socket path). Usage errors are one line naming the command's --help, exit 2.
 */
import { spawnSync } from 'node:child_process';
import { Command, InvalidArgumentError, Option } from 'commander';
import { parseSize } from './size.js';

/** Exit status of a usage or configuration error (bad flag, missing argument, bad config file). */
export const USAGE_EXIT = 2;

const TRUE_WORDS = ['1', 'yes', 'true', 'on', 'y'];
const FALSE_WORDS = ['0', 'no', 'false', 'off', 'n', ''];

/** A yes/no word from the environment; undefined when it is neither. Empty is no. */
export function parseBool(v: string): boolean | undefined {
  const w = v.trim().toLowerCase();
  if (TRUE_WORDS.includes(w)) return true;
  if (FALSE_WORDS.includes(w)) return false;
  return undefined;
}

/** "cgstep run" for the run subcommand: what a user types before --help. */
export function commandPath(cmd: Command): string {
  const names: string[] = [];
  for (let c: Command | null = cmd; c; c = c.parent) names.unshift(c.name());
  return names.join(' ');
}

/** A mistake in how a command was typed, found before anything is asked of the agent. */
export class UsageError extends Error {
  constructor(message: string, readonly command: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/** The one line a usage error prints: what is wrong and where the help is. */
export function usageLine(command: string, message: string): string {
  return `${command}: ${message.replace(/^error: /, '')} (see ${command} --help)`;
}

export class EnvCommand extends Command {
  override createCommand(name?: string): EnvCommand {
    return new EnvCommand(name);
  }

  /** One line and exit 2, instead of commander's message, the whole help and exit 1. */
  override error(message: string, errorOptions?: { code?: string; exitCode?: number }): never {
    process.stderr.write(usageLine(commandPath(this), message) + '\n');
    const code = errorOptions?.code;
    // --help and --version end through here too (code commander.helpDisplayed / .version, exit 0).
    process.exit(code === 'commander.helpDisplayed' || code === 'commander.version' ? 0 : USAGE_EXIT);
  }

  /** Overrides commander's private reader of option variables (called after the command line). */
  _parseOptionsEnv(): void {
    for (const option of this.options) {
      const name = option.envVar;
      if (!name) continue;
      const raw = process.env[name];
      if (raw === undefined || raw === '') continue;
      const key = option.attributeName();
      const source = this.getOptionValueSource(key);
      if (this.getOptionValue(key) !== undefined && !['default', 'config', 'env'].includes(source ?? '')) continue;
      if (option.required || option.optional) {
        (this as unknown as NodeJS.EventEmitter).emit(`optionEnv:${option.name()}`, raw);
        continue;
      }
      const b = parseBool(raw);
      if (b === undefined) this.error(`${name}=${raw}: expected yes or no (1/0, true/false, on/off; empty is no)`);
      this.setOptionValueWithSource(key, option.negate ? !b : b, 'env');
    }
  }
}

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

/** A size on the command line: a bare number is MiB (as Slurm's --mem), K/M/G/T as written. */
export function sizeArg(what: string) {
  return (v: string): number => {
    try {
      return parseSize(v, what, 'M');
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
