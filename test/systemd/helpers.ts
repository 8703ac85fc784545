/**
 * test/systemd/helpers: small tools for the systemd tests only: a capturing
 * pino logger, an AF_UNIX datagram listener (through the same koffi libc
 * bindings as src/systemd/notify), and a scratch D-Bus daemon for "a bus
 * without systemd", and the shared header of a suite that runs against the
 * systemd sandbox. Everything started here is ended by pid.
 */
import test, { type ExecutionContext } from 'ava';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pino, type Logger } from 'pino';
import { AF_UNIX, MSG_DONTWAIT, SOCK_CLOEXEC, SOCK_DGRAM, lastErrno, libc, sockaddrUn } from '../../src/sys/libc.js';
import { sandboxSupport, startSandbox, type Sandbox } from '../harness/systemd-sandbox.js';
import { gate, type GatedTest } from '../helpers/gate.js';

/**
 * test.serial where the systemd sandbox can run; elsewhere test.serial.skip,
 * said loudly (without root, util-linux, dbus-daemon or systemd the sandbox
 * cannot run; sandboxSupport() says what is missing). file: import.meta.url.
 */
export function sandboxTest(file: string): { ok: boolean; test: GatedTest } {
  return gate('systemd sandbox', sandboxSupport(), file);
}

/**
 * One sandbox for a whole test file: started in test.before (then onUp),
 * stopped in test.after.always (after onDown). sandbox() is the running
 * sandbox (undefined before it is up, or when the sandbox cannot run here).
 */
export function sandboxSuite(
  name: string,
  file: string,
  o: { onUp?: (sb: Sandbox, t: ExecutionContext) => void | Promise<void>; onDown?: () => void | Promise<void> } = {},
): { test: GatedTest; sandbox: () => Sandbox } {
  const gate = sandboxTest(file);
  let sb: Sandbox | undefined;
  test.before(async (t) => {
    if (!gate.ok) return;
    sb = await startSandbox({ name });
    await o.onUp?.(sb, t);
  });
  test.after.always(async () => {
    try {
      await o.onDown?.();
    } finally {
      await sb?.stop();
    }
  });
  return { test: gate.test, sandbox: () => sb as Sandbox };
}

export function captureLog(): { log: Logger; lines: Array<Record<string, unknown>>; messages: () => string[] } {
  const lines: Array<Record<string, unknown>> = [];
  const log = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s)) });
  return { log, lines, messages: () => lines.map((l) => String(l.msg)) };
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export async function until<T>(fn: () => T | Promise<T>, timeoutMs: number, what: string): Promise<T> {
  const end = Date.now() + timeoutMs;
  let step = 5;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(step);
    step = Math.min(step * 2, 100);
  }
}

/** A bound AF_UNIX datagram socket (path, or '@name' abstract) that reads without blocking. */
export class DatagramListener {
  readonly address: string;
  private fd: number;
  constructor(address: string) {
    const c = libc();
    this.address = address;
    this.fd = c.socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (this.fd < 0) throw new Error(`socket: ${lastErrno()}`);
    const sa = sockaddrUn(address);
    if (c.bind(this.fd, sa.addr, sa.len) < 0) {
      const e = lastErrno();
      c.close(this.fd);
      throw new Error(`bind ${address}: ${e}`);
    }
  }
  /** One datagram, or null when none is queued. */
  tryRecv(): string | null {
    const buf = Buffer.alloc(4096);
    const n = libc().recv(this.fd, buf, buf.length, MSG_DONTWAIT);
    if (n < 0) {
      const e = lastErrno();
      if (e === 'EAGAIN' || e === 'EWOULDBLOCK') return null;
      throw new Error(`recv: ${e}`);
    }
    return buf.subarray(0, n).toString('utf8');
  }
  async recv(timeoutMs = 2000): Promise<string> {
    return (await until(() => this.tryRecv(), timeoutMs, `a datagram on ${this.address}`)) as string;
  }
  close(): void {
    if (this.fd >= 0) libc().close(this.fd);
    this.fd = -1;
    if (!this.address.startsWith('@')) fs.rmSync(this.address, { force: true });
  }
}

/** A scratch dbus-daemon (no systemd on it), stopped by pid. */
export function startBareBus(): { address: string; pid: number; stop: () => void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-bus-'));
  const address = `unix:path=${dir}/bus`;
  const r = spawnSync('dbus-daemon', ['--session', `--address=${address}`, '--fork', '--nopidfile', '--nosyslog', '--print-pid=1'], { encoding: 'utf8', timeout: 10000 });
  const pid = Number(r.stdout.trim());
  if (r.status !== 0 || !pid) throw new Error(`dbus-daemon failed: ${r.stderr}`);
  return {
    address,
    pid,
    stop: () => {
      try {
        process.kill(pid, 'SIGTERM');
      } catch {
        /* gone */
      }
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

export function readProcs(dir: string): number[] {
  return fs.readFileSync(path.join(dir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean).map(Number);
}
