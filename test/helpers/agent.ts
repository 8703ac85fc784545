/**
 * test/helpers/agent: start a real cgstepd (the built dist/bin/cgstepd.js) on
 * its own socket and cgroup root, talk to it with the real client or CLI, and
 * stop it by pid.
 */
import { spawn, spawnSync, type ChildProcess, type SpawnSyncOptions } from 'node:child_process';
import fs from 'node:fs';
import type net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { CgstepClient } from '../../src/rpc/client.js';
import { testLockDir } from './cgroup.js';

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(here, '../..');
export const CGSTEPD = path.join(REPO, 'dist/bin/cgstepd.js');
export const CGSTEP = path.join(REPO, 'dist/bin/cgstep.js');

export interface RunningAgent {
  pid: number;
  socket: string;
  proc: ChildProcess;
  log: () => string;
  /** Parsed JSON log lines. */
  logLines: () => any[];
  client: () => Promise<CgstepClient>;
  cli: (args: string[], opts?: SpawnSyncOptions) => { code: number | null; stdout: string; stderr: string };
  /** Stop by pid (SIGTERM by default) and remove the socket's temp dir unless keepSocketDir. */
  stop: (signal?: NodeJS.Signals) => Promise<number | null>;
  keepSocketDir: boolean;
}

export function tmpSocket(name: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `cgstep-${name}-`));
  return path.join(dir, 'cgstepd.sock');
}

export interface AgentOptions {
  root: string;
  socket?: string;
  args?: string[];
  env?: Record<string, string>;
  expectExit?: boolean;
  /**
   * A command that execs the agent in place (e.g. nsenter into a node's
   * namespaces): the agent keeps its pid, and stop() still signals it.
   */
  launcher?: string[];
  /** Where this process reaches the socket when the agent sees it elsewhere (another mount namespace). Default: socket. */
  reachAt?: string;
}

export async function startAgent(opts: AgentOptions): Promise<RunningAgent> {
  const socket = opts.socket ?? tmpSocket('agent');
  const ownDir = opts.socket === undefined ? path.dirname(socket) : null;
  const reach = opts.reachAt ?? socket;
  const own = opts.args?.includes('--lock-dir') ? [] : ['--lock-dir', testLockDir(opts.root)];
  const args = [CGSTEPD, '--socket', socket, '--cgroup-root', opts.root, ...own, '--log-level', 'debug', ...(opts.args ?? [])];
  const [cmd, ...cmdArgs] = [...(opts.launcher ?? []), process.execPath, ...args];
  const proc = spawn(cmd, cmdArgs, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...opts.env } });
  let out = '';
  proc.stdout!.on('data', (d) => (out += d));
  proc.stderr!.on('data', (d) => (out += d));
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  const agent: RunningAgent = {
    pid: proc.pid!,
    socket,
    proc,
    log: () => out,
    logLines: () => out.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l)),
    client: () => CgstepClient.connect(reach, { timeoutMs: 20000 }),
    cli: (a, o = {}) => cli(reach, a, o),
    stop: async (signal = 'SIGTERM') => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      const code = await exited;
      if (ownDir && signal !== 'SIGKILL' && !agent.keepSocketDir) fs.rmSync(ownDir, { recursive: true, force: true });
      return code;
    },
    keepSocketDir: false,
  };
  if (opts.expectExit) {
    await exited;
    if (ownDir) fs.rmSync(ownDir, { recursive: true, force: true });
    return agent;
  }
  const deadline = Date.now() + 60000; // generous: a loaded 2-core CI machine starts node slowly
  // An agent that never became ready leaves nothing of what this function made.
  const failed = async (msg: string): Promise<never> => {
    if (proc.exitCode === null) proc.kill('SIGKILL');
    await exited;
    if (ownDir) fs.rmSync(ownDir, { recursive: true, force: true });
    throw new Error(msg);
  };
  for (;;) {
    if (proc.exitCode !== null) return failed(`cgstepd exited with ${proc.exitCode}:\n${out}`);
    if (fs.existsSync(reach) && (await answers(reach))) return agent;
    if (Date.now() > deadline) return failed(`cgstepd did not become ready:\n${out}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function answers(socket: string): Promise<boolean> {
  try {
    const c = await CgstepClient.connect(socket, { timeoutMs: 2000 });
    try {
      await c.request('hello', {});
      return true;
    } finally {
      c.close();
    }
  } catch {
    return false;
  }
}

export function cli(socket: string, args: string[], opts: SpawnSyncOptions = {}): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CGSTEP, '--socket', socket, ...args], { encoding: 'utf8', timeout: 60000, ...opts });
  return { code: r.status, stdout: String(r.stdout ?? ''), stderr: String(r.stderr ?? '') };
}

/** A child that spins until killed; returns it (end it with kill by pid). */
export function spawnSleeper(): ChildProcess {
  return spawn('sleep', ['600'], { stdio: 'ignore' });
}

/**
 * n sleeping processes (`sleep seconds`), children of one shell that reaps
 * them, so that their ends do not load the caller's loop; resolves once every
 * pid is known. End them by pid, then the shell.
 */
export async function sleepersOfOneShell(n: number, seconds = 600): Promise<{ shell: ChildProcess; pids: number[] }> {
  const shell = spawn('bash', ['-c', `for i in $(seq ${n}); do sleep ${seconds} & echo $!; done; wait`], { stdio: ['ignore', 'pipe', 'ignore'] });
  const pids: number[] = [];
  let rest = '';
  await new Promise<void>((resolve, reject) => {
    shell.once('exit', () => reject(new Error('the shell that starts the sleepers exited')));
    shell.stdout!.setEncoding('utf8').on('data', (d: string) => {
      const lines = (rest + d).split('\n');
      rest = lines.pop()!;
      pids.push(...lines.map(Number));
      if (pids.length >= n) resolve();
    });
  });
  return { shell, pids };
}

export function killPid(pid: number | undefined): void {
  if (!pid) return;
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    /* gone */
  }
}

/**
 * Write data (raw bytes: lines, junk, half lines) on a connected socket and
 * collect the agent's reply lines, parsed, until n have come (then s is
 * destroyed) or the connection closes; after timeoutMs, an error. Errors on s
 * are left to the caller's listeners.
 */
export function replyLines(s: net.Socket, data: string | Buffer, n: number, timeoutMs = 20000): Promise<any[]> {
  return new Promise((resolve, reject) => {
    const out: any[] = [];
    let buf = '';
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`got ${out.length} of ${n} replies`));
    }, timeoutMs);
    s.on('data', (d) => {
      buf += d;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        out.push(JSON.parse(buf.slice(0, i)));
        buf = buf.slice(i + 1);
      }
      if (out.length >= n) {
        clearTimeout(timer);
        s.destroy();
        resolve(out);
      }
    });
    s.on('close', () => {
      clearTimeout(timer);
      resolve(out);
    });
    s.write(data);
  });
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function waitFor(check: () => boolean | Promise<boolean>, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}
