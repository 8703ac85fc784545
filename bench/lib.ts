/**
 * bench/lib: shared pieces of the benchmarks: statistics, a private cgroup
 * root, an agent started from dist/ with its output discarded, RSS.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { CgstepClient } from '../src/rpc/client.js';
import { findCgroup2Mount } from '../src/cgroupfs/mount.js';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const MOUNT = findCgroup2Mount().mountPoint;

export interface Summary { n: number; median: number; p99: number; mean: number }

export function summarize(xs: number[]): Summary {
  const s = [...xs].sort((a, b) => a - b);
  const q = (p: number) => s[Math.min(s.length - 1, Math.floor(p * s.length))];
  return { n: s.length, median: q(0.5), p99: q(0.99), mean: s.reduce((a, b) => a + b, 0) / s.length };
}

export const ms = (x: number) => `${x.toFixed(3)} ms`;

export function benchRoot(name: string): string {
  const dir = path.join(MOUNT, `cgstep-bench-${name}-${process.pid}`);
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

export async function removeRoot(dir: string): Promise<void> {
  if (!fs.existsSync(dir)) return;
  fs.writeFileSync(path.join(dir, 'cgroup.kill'), '1');
  for (let i = 0; i < 250 && /populated 1/.test(fs.readFileSync(path.join(dir, 'cgroup.events'), 'utf8')); i++) await new Promise((r) => setTimeout(r, 20));
  const rm = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) if (e.isDirectory()) rm(path.join(d, e.name));
    fs.rmdirSync(d);
  };
  rm(dir);
}

/** The node flags of cgstepd's #! line, so a benchmark runs the agent as installed. */
export const AGENT_NODE_FLAGS = (/^#!.*\bnode\b(.*)$/.exec(fs.readFileSync(path.join(REPO, 'dist/bin/cgstepd.js'), 'utf8').split('\n')[0])?.[1] ?? '').trim().split(/\s+/).filter(Boolean);

export interface BenchAgent { proc: ChildProcess; socket: string; stop: () => Promise<void> }

/**
 * The agent for a benchmark; its log goes to `logFile` when given, else to a
 * socket this process reads and discards, as journald reads a service's
 * stdout (a write to /dev/null would cost the agent less than a real log
 * does); `nodeFlags` are added to the #! line's.
 */
export async function startAgent(root: string, args: string[] = [], socketDir?: string, logFile?: string, nodeFlags: string[] = []): Promise<BenchAgent> {
  const dir = socketDir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-bench-'));
  const socket = path.join(dir, 's.sock');
  const log = logFile ? fs.openSync(logFile, 'a') : 'pipe';
  const proc = spawn(process.execPath, [...AGENT_NODE_FLAGS, ...nodeFlags, path.join(REPO, 'dist/bin/cgstepd.js'), '--ignore-systemd', '--cgroup-root', root, '--socket', socket, ...args], { stdio: ['ignore', log, log] });
  if (typeof log === 'number') fs.closeSync(log);
  proc.stdout?.resume();
  proc.stderr?.resume();
  await waitReady(socket, proc);
  return {
    proc,
    socket,
    stop: async () => {
      if (proc.exitCode === null) {
        proc.kill('SIGTERM');
        await new Promise((r) => proc.once('exit', r));
      }
      if (!socketDir) fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

export async function waitReady(socket: string, proc: ChildProcess, op: 'hello' | 'list' = 'hello'): Promise<number> {
  const t0 = performance.now();
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`cgstepd exited with ${proc.exitCode}`);
    try {
      const c = await CgstepClient.connect(socket, { timeoutMs: 60000 });
      await c.request(op, {});
      c.close();
      return performance.now() - t0;
    } catch {
      await new Promise((r) => setTimeout(r, 2));
    }
  }
}

export function rssMiB(pid: number): number {
  return Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) / 1024;
}

export function sleeper(): ChildProcess {
  return spawn('sleep', ['3600'], { stdio: 'ignore' });
}

/** A loopback port nobody listens on right now. */
export async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise((r) => srv.close(r));
  return port;
}

/**
 * Root's `status` latencies, one every intervalMs while `going()`, on one kept
 * connection or on a new connection each time (`fresh`).
 */
export async function sampleStatus(socket: string, fresh: boolean, going: () => boolean, intervalMs: number): Promise<number[]> {
  const out: number[] = [];
  const kept = fresh ? null : await CgstepClient.connect(socket, { timeoutMs: 60000 });
  while (going()) {
    const t0 = performance.now();
    const c = kept ?? (await CgstepClient.connect(socket, { timeoutMs: 60000 }));
    await c.request('status', {});
    if (!kept) c.close();
    out.push(performance.now() - t0);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
  kept?.close();
  return out;
}
