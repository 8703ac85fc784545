/**
 * test/security/multiuser: an agent that throwaway users may reach as its
 * options configure it (no hand chmod of the socket), and the cgstep client
 * run as one of them through setpriv.
 */
import { spawn, spawnSync, type ChildProcess, type StdioOptions } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CGSTEP, REPO, startAgent, type RunningAgent } from '../helpers/agent.js';
import type { TestUser } from '../helpers/users.js';

/** A socket directory that every user may traverse and only root may write (as /run/cgstepd is). */
export function socketDir(name: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `cgstep-${name}-`));
  fs.chmodSync(dir, 0o755);
  return dir;
}

export function startMultiUser(root: string, dir: string, args: string[]): Promise<RunningAgent> {
  return startAgent({ root, socket: path.join(dir, 'cgstepd.sock'), args: ['--ignore-systemd', ...args] });
}

const setpriv = (u: TestUser) => ['setpriv', '--reuid', String(u.uid), '--regid', String(u.gid), '--init-groups'];

/** `cgstep --json ...` as u; the parsed error on failure. */
export function cgstepAs(u: TestUser, socket: string, args: string[]) {
  const [cmd, ...rest] = setpriv(u);
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
  const [cmd, ...rest] = setpriv(u);
  const r = spawnSync(cmd, [...rest, process.execPath, '--input-type=module', '-e', BATCH, path.join(REPO, 'dist/rpc/client.js'), socket, JSON.stringify(reqs)], { encoding: 'utf8', timeout: 60000 });
  if (r.status !== 0) throw new Error(`requests as uid ${u.uid} failed: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

/** A process of u's (sleep), or with node, one with several threads. */
export function spawnAs(u: TestUser, argv: string[], stdio: StdioOptions = 'ignore'): ChildProcess {
  const [cmd, ...rest] = setpriv(u);
  return spawn(cmd, [...rest, ...argv], { stdio });
}

/** The "0::" line of /proc/PID/cgroup. */
export function cgroupOf(pid: number): string {
  return fs.readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n').find((l) => l.startsWith('0::'))!.slice(3);
}

/** The process's thread ids other than its own pid (waits until it has one). */
export async function threadsOf(pid: number): Promise<number[]> {
  for (let i = 0; i < 200; i++) {
    const t = fs.readdirSync(`/proc/${pid}/task`).map(Number).filter((x) => x !== pid);
    if (t.length) return t;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`process ${pid} has no second thread`);
}

/** Some kernel thread other than kthreadd (a child of pid 2). */
export function aKernelThread(): number {
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d) || d === '2') continue;
    try {
      const st = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
      if (st.slice(st.lastIndexOf(')') + 2).split(' ')[1] === '2') return Number(d);
    } catch {
      /* gone */
    }
  }
  throw new Error('no kernel thread found');
}
