/**
 * test/helpers/users: throwaway local users and groups for tests that need real
 * other uids (useradd/groupadd with a name unique to the run, removed by name
 * in teardown), and running a command as one of them with setpriv.
 */
import { spawn, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { randomBytes } from 'node:crypto';

export interface TestUser { name: string; uid: number; gid: number }

function must(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr || r.error?.message}`);
  return r.stdout;
}

/** A new user with its own group; prefix says which test made it. */
export function addUser(prefix: string): TestUser {
  const name = `${prefix}_${randomBytes(3).toString('hex')}`;
  must('useradd', ['--no-create-home', '--shell', '/usr/sbin/nologin', '--user-group', name]);
  return { name, uid: Number(must('id', ['-u', name]).trim()), gid: Number(must('id', ['-g', name]).trim()) };
}

export function addGroup(prefix: string): { name: string; gid: number } {
  const name = `${prefix}_${randomBytes(3).toString('hex')}`;
  must('groupadd', [name]);
  return { name, gid: Number(must('getent', ['group', name]).split(':')[2]) };
}

export function removeUser(u: TestUser | undefined): void {
  if (u) spawnSync('userdel', [u.name]);
}

export function removeGroup(g: { name: string } | undefined): void {
  if (g) spawnSync('groupdel', [g.name]);
}

/** setpriv's arguments to become u (its own group plus extra supplementary groups). */
export function asUser(u: { uid: number; gid: number }, groups: number[] = []): string[] {
  return ['setpriv', '--reuid', String(u.uid), '--regid', String(u.gid), ...(groups.length ? ['--groups', groups.join(',')] : ['--clear-groups'])];
}

/** Run node with a script as u, in the background. */
export function nodeAs(u: { uid: number; gid: number }, script: string, args: string[] = [], opts: SpawnOptions = {}): ChildProcess {
  const [cmd, ...rest] = asUser(u);
  return spawn(cmd, [...rest, process.execPath, '-e', script, ...args], { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
}
