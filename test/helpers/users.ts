/**
 * test/helpers/users: throwaway local users and groups for tests that need real
 * other uids (useradd/groupadd with a name unique to the run, removed by name
 * in teardown); running commands, node scripts and the cgstep client as one
 * of them with setpriv; and an agent such users may reach as its options
 * configure it (no hand chmod of the socket).
 */
import { spawn, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CGSTEP, REPO, killPid, startAgent, waitFor, type RunningAgent } from './agent.js';
import { makeTestRoot, removeTestRoot } from './cgroup.js';

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

/**
 * How the supplementary groups are set: the listed gids (none: cleared), or
 * 'init' for the user's groups in /etc/group (a user must exist by that uid).
 */
export type Groups = number[] | 'init';

/** setpriv's arguments to become u with those supplementary groups. */
export function asUser(u: { uid: number; gid: number }, groups: Groups = []): string[] {
  const g = groups === 'init' ? ['--init-groups'] : groups.length ? ['--groups', groups.join(',')] : ['--clear-groups'];
  return ['setpriv', '--reuid', String(u.uid), '--regid', String(u.gid), ...g];
}

/** Run argv as u, in the background (its groups from /etc/group unless told). */
export function spawnAs(u: { uid: number; gid: number }, argv: string[], opts: SpawnOptions = { stdio: 'ignore' }, groups: Groups = 'init'): ChildProcess {
  const [cmd, ...rest] = asUser(u, groups);
  return spawn(cmd, [...rest, ...argv], opts);
}

/** A sleep of u's, exec'd (so its uids are u's; its pid goes on `pids` for the cleanup), and when it ends (the signal). */
export async function sleepAs(u: { uid: number; gid: number }, pids: number[]): Promise<{ pid: number; exited: Promise<NodeJS.Signals | null> }> {
  const p: ChildProcess = spawnAs(u, ['sleep', '600']);
  pids.push(p.pid!);
  const exited = new Promise<NodeJS.Signals | null>((r) => p.once('exit', (_code, sig) => r(sig)));
  await waitFor(() => fs.readFileSync(`/proc/${p.pid}/comm`, 'utf8').trim() === 'sleep', 5000, 'sleep to exec');
  return { pid: p.pid!, exited };
}

/** Run node with a script as u, in the background, its stdout and stderr piped. */
export function nodeAs(u: { uid: number; gid: number }, script: string, args: string[] = [], opts: SpawnOptions = {}, groups: Groups = []): ChildProcess {
  return spawnAs(u, [process.execPath, '-e', script, ...args], { stdio: ['ignore', 'pipe', 'pipe'], ...opts }, groups);
}

/** Run a node script as u to its end; resolves with its output (stdout and stderr), rejects when it exits non-zero. */
export function nodeOutputAs(u: { uid: number; gid: number }, groups: Groups, script: string, args: string[]): Promise<string> {
  const p = nodeAs(u, script, args, {}, groups);
  return new Promise((resolve, reject) => {
    let out = '';
    p.stdout!.on('data', (d) => (out += d));
    p.stderr!.on('data', (d) => (out += d));
    p.once('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`exit ${code}: ${out}`))));
  });
}

/** A socket directory that every user may traverse and only root may write (as /run/cgstepd is). */
export function socketDir(name: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `cgstep-${name}-`));
  fs.chmodSync(dir, 0o755);
  return dir;
}

export function startMultiUser(root: string, dir: string, args: string[]): Promise<RunningAgent> {
  return startAgent({ root, socket: path.join(dir, 'cgstepd.sock'), args: ['--ignore-systemd', ...args] });
}

/** `cgstep --json ...` as u; the parsed error on failure. */
export function cgstepAs(u: TestUser, socket: string, args: string[]) {
  const [cmd, ...rest] = asUser(u, 'init');
  const r = spawnSync(cmd, [...rest, process.execPath, CGSTEP, '--socket', socket, '--json', ...args], { encoding: 'utf8', timeout: 60000 });
  let error: { code: string; message: string } | undefined;
  let result: any;
  try {
    if (r.status === 0) result = JSON.parse(r.stdout);
    else error = JSON.parse(r.stderr).error;
  } catch {
    error = { code: 'UNPARSED', message: `${r.stdout}${r.stderr}` };
  }
  return { code: r.status, result, error, stdout: r.stdout, stderr: r.stderr };
}

const BATCH = `
const { CgstepClient } = await import(process.argv[1]);
const c = await CgstepClient.connect(process.argv[2]);
const out = [];
for (const [op, args] of JSON.parse(process.argv[3])) {
  try { out.push({ ok: true, result: await c.request(op, args) }); }
  catch (e) { out.push({ ok: false, error: { code: e.code, message: e.message } }); }
}
c.close();
process.stdout.write(JSON.stringify(out));
`;

export type Outcome = { ok: true; result: any; error?: undefined } | { ok: false; error: { code: string; message: string }; result?: undefined };

/** Several requests as u on one connection (one process: a CLI start per request is slow on a loaded machine). */
export function requestsAs(u: TestUser, socket: string, reqs: [op: string, args: object][]): Outcome[] {
  const [cmd, ...rest] = asUser(u, 'init');
  const r = spawnSync(cmd, [...rest, process.execPath, '--input-type=module', '-e', BATCH, path.join(REPO, 'dist/rpc/client.js'), socket, JSON.stringify(reqs)], { encoding: 'utf8', timeout: 60000 });
  if (r.status !== 0) throw new Error(`requests as uid ${u.uid} failed: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

/** Two throwaway users an agent allows (--allow-uid both), and the pids a test wants ended after it. */
export interface TwoUsers {
  root: string;
  dir: string;
  agent: RunningAgent;
  alice: TestUser;
  bob: TestUser;
  pids: number[];
  /** Stop the agent and start another on the same tree and socket, with the same options. */
  restart(): Promise<void>;
}

/**
 * For a test file: before its tests, two new users and a real agent on a new
 * cgroup root that allows both (plus `args`); after them, every pid in
 * ctx.pids ended, the agent stopped, the root, the socket directory and both
 * users removed. `then` runs last in the same hook (ava runs a file's before
 * hooks at once, so a second one could not rely on this one).
 */
export function withTwoUsers(
  test: { before: (fn: () => Promise<void>) => void; after: { always: (fn: () => Promise<void>) => void } },
  name: string,
  args: string[] = [],
  then?: (ctx: TwoUsers) => void,
): TwoUsers {
  const ctx = { pids: [] as number[] } as TwoUsers;
  const all = () => ['--allow-uid', String(ctx.alice.uid), '--allow-uid', String(ctx.bob.uid), ...args];
  ctx.restart = async () => {
    await ctx.agent.stop();
    ctx.agent = await startMultiUser(ctx.root, ctx.dir, all());
  };
  test.before(async () => {
    ctx.alice = addUser(`cgs_${name}`);
    ctx.bob = addUser(`cgs_${name}`);
    ctx.root = makeTestRoot(`sec-${name}`);
    ctx.dir = socketDir(`sec-${name}`);
    ctx.agent = await startMultiUser(ctx.root, ctx.dir, all());
    then?.(ctx);
  });
  test.after.always(async () => {
    for (const p of ctx.pids) killPid(p);
    await ctx.agent?.stop();
    if (ctx.dir) fs.rmSync(ctx.dir, { recursive: true, force: true });
    if (ctx.root) await removeTestRoot(ctx.root);
    removeUser(ctx.alice);
    removeUser(ctx.bob);
  });
  return ctx;
}
