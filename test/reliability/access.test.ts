/**
 * Who may act: SO_PEERCRED with real other uids (setpriv), operator and allowed
 * uids, a read-only group (primary or supplementary, via SO_PEERGROUPS), and
 * the socket directory check at start.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { makeTestRoot, removeTestRoot } from '../helpers/cgroup.js';
import { CGSTEP, startAgent, type RunningAgent } from '../helpers/agent.js';
import { asUser } from '../helpers/users.js';

const ctx: { root: string; agent: RunningAgent; dir: string } = {} as any;

test.before(async () => {
  ctx.root = makeTestRoot('access');
  ctx.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-access-'));
  fs.chmodSync(ctx.dir, 0o755);
  ctx.agent = await startAgent({ root: ctx.root, socket: path.join(ctx.dir, 's.sock'), args: ['--ignore-systemd', '--allow-uid', '4242', '--read-only-gid', '4343', '--operator-uid', '4444'] });
});
test.after.always(async () => {
  await ctx.agent?.stop();
  fs.rmSync(ctx.dir, { recursive: true, force: true });
  await removeTestRoot(ctx.root);
});

function as(uid: number, gid: number, args: string[], groups: number[] = []) {
  const [cmd, ...pre] = asUser({ uid, gid }, groups);
  const r = spawnSync(cmd, [...pre, process.execPath, CGSTEP, '--socket', ctx.agent.socket, ...args], { encoding: 'utf8' });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

test.serial('with allowed uids and no socket group, the socket is 0666 and SO_PEERCRED decides', (t) => {
  t.is(fs.statSync(ctx.agent.socket).mode & 0o777, 0o666);
});

test.serial('an operator uid acts as root does', (t) => {
  t.is(as(4444, 4444, ['job', 'create', '76']).code, 0);
  t.is(as(4444, 4444, ['destroy', '76']).code, 0);
});

test.serial('a supplementary member of the read-only group reads, and may not act', (t) => {
  t.is(as(5002, 5002, ['list'], [4343]).code, 0);
  t.regex(as(5002, 5002, ['job', 'create', '75'], [100, 4343]).stderr, /EPERM: uid 5002 may only use read-only requests/);
  t.regex(as(5002, 5002, ['list'], [100]).stderr, /EPERM: uid 5002 is not allowed/);
});

test.serial('an allowed uid may act', (t) => {
  const r = as(4242, 4242, ['job', 'create', '77']);
  t.is(r.code, 0, r.stderr);
  t.is(as(4242, 4242, ['destroy', '77']).code, 0);
});

test.serial('a read-only group may use status, list, stats and events, nothing else', (t) => {
  t.is(as(5000, 4343, ['status']).code, 0);
  t.is(as(5000, 4343, ['list']).code, 0);
  t.is(ctx.agent.cli(['job', 'create', '78']).code, 0);
  t.is(as(5000, 4343, ['stats', '78']).code, 0);
  const r = as(5000, 4343, ['job', 'create', '79']);
  t.is(r.code, 1);
  t.regex(r.stderr, /EPERM: uid 5000 may only use read-only requests/);
  const d = as(5000, 4343, ['destroy', '78']);
  t.regex(d.stderr, /EPERM/);
  t.is(ctx.agent.cli(['destroy', '78']).code, 0);
});

test.serial('any other uid is refused outright', (t) => {
  const r = as(5001, 5001, ['status']);
  t.is(r.code, 1);
  t.regex(r.stderr, /EPERM: uid 5001 is not allowed/);
});

test('the agent refuses a socket in /tmp (writable by everyone, sticky), as a newcomer might first try, and a symlinked directory: a configuration error (exit 2) before anything is made', async (t) => {
  const root = makeTestRoot('access2');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-link-'));
  const inTmp = path.join('/tmp', `cgstep-access-${process.pid}.sock`);
  t.teardown(async () => {
    fs.rmSync(inTmp, { force: true });
    fs.rmSync(dir, { recursive: true, force: true });
    await removeTestRoot(root);
  });
  t.is(fs.statSync('/tmp').mode & 0o7777, 0o1777, "this machine's /tmp, as every Linux has it");
  const a = await startAgent({ root, socket: inTmp, args: ['--ignore-systemd'], expectExit: true });
  t.is(a.proc.exitCode, 2);
  t.regex(a.log(), /--socket \/tmp\/cgstep-access-\d+\.sock: socket directory \/tmp is writable by others \(mode 1777\)/);
  t.false(fs.existsSync(inTmp), 'no socket made there');
  const made = () => fs.readdirSync(root, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name);
  t.deepEqual(made(), [], 'no scope (and so no infinity process) was made');
  fs.mkdirSync(path.join(dir, 'real'));
  fs.symlinkSync(path.join(dir, 'real'), path.join(dir, 'link'));
  const b = await startAgent({ root, socket: path.join(dir, 'link', 's.sock'), args: ['--ignore-systemd'], expectExit: true });
  t.is(b.proc.exitCode, 2);
  t.regex(b.log(), /is a symbolic link/);
  t.deepEqual(made(), []);
  t.false(fs.existsSync(path.join(dir, 'real', 's.sock')));
});

test('a /metrics unix socket in a directory others may write is refused the same way (exit 2, nothing made)', async (t) => {
  const root = makeTestRoot('access3');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-msock-'));
  const inTmp = path.join('/tmp', `cgstep-metrics-${process.pid}.sock`);
  t.teardown(async () => {
    fs.rmSync(inTmp, { force: true });
    fs.rmSync(dir, { recursive: true, force: true });
    await removeTestRoot(root);
  });
  const a = await startAgent({ root, socket: path.join(dir, 's.sock'), args: ['--ignore-systemd', '--metrics', `unix:${inTmp}`], expectExit: true });
  t.is(a.proc.exitCode, 2);
  t.regex(a.log(), /--metrics unix:\/tmp\/cgstep-metrics-\d+\.sock: metrics socket directory \/tmp is writable by others/);
  t.false(fs.existsSync(inTmp));
  t.deepEqual(fs.readdirSync(root, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name), []);
});

test('a /metrics unix socket path held by a live listener, or by a file that is not a socket, is never replaced', async (t) => {
  const root = makeTestRoot('access4');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-msock-'));
  fs.chmodSync(dir, 0o755);
  const held = path.join(dir, 'live.sock');
  const plain = path.join(dir, 'plain.sock');
  const other = net.createServer((c) => c.on('error', () => {}).end('still mine\n'));
  t.teardown(async () => {
    await new Promise((r) => other.close(r));
    fs.rmSync(dir, { recursive: true, force: true });
    await removeTestRoot(root);
  });
  await new Promise<void>((r) => other.listen(held, r));
  fs.writeFileSync(plain, 'keep me\n');
  for (const [where, why] of [[held, /another cgstepd is already listening on .*live\.sock/], [plain, /plain\.sock exists and is not a socket; refusing to replace it/]] as const) {
    const a = await startAgent({ root, socket: path.join(dir, 's.sock'), args: ['--ignore-systemd', '--metrics', `unix:${where}`], expectExit: true });
    t.not(a.proc.exitCode, 0);
    t.regex(a.log(), why);
  }
  t.is(fs.readFileSync(plain, 'utf8'), 'keep me\n');
  const reply = await new Promise<string>((resolve, reject) => {
    let got = '';
    net.connect(held).on('data', (d) => (got += d)).on('end', () => resolve(got)).on('error', reject);
  });
  t.is(reply, 'still mine\n');
});
