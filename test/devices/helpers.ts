/**
 * test/devices/helpers: what the real-kernel device tests share. A private
 * cgroup under the cgroup2 mount (removed bottom-up after its processes are
 * killed by pid), a temp dir of device nodes made with mknod, and the prober
 * (prober.py), a process moved into a cgroup that reports what open, mknod and
 * access(F_OK) return there. Nothing here is ever killed by name.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import { findCgroup2Mount } from '../../src/cgroupfs/mount.js';
import { addonError, loadedPrograms } from '../../src/devices/index.js';

const here = path.dirname(fileURLToPath(import.meta.url));
export const MOUNT = findCgroup2Mount().mountPoint;
export const PROBER = path.join(here, 'prober.py');

/** Why kernel tests cannot run here, or null. */
export function kernelSkipReason(): string | null {
  if (process.getuid?.() !== 0) return 'needs root';
  return addonError();
}

/** A logger that keeps its lines for assertions (and prints nothing). */
export function memLogger(): { log: pino.Logger; lines: () => any[] } {
  const chunks: string[] = [];
  const log = pino({ level: 'debug' }, { write: (s: string) => void chunks.push(s) });
  return { log, lines: () => chunks.join('').split('\n').filter(Boolean).map((l) => JSON.parse(l)) };
}

/** A unique program name for one test file: cgstep_dev + 5 hex characters. */
export function uniqueProgName(): string {
  return `cgstep_dev${randomBytes(3).toString('hex').slice(0, 5)}`;
}

export class Cgroups {
  readonly root: string;
  private readonly procs: Prober[] = [];

  constructor(tag: string) {
    this.root = path.join(MOUNT, `cgstep-devtest-${tag}-${process.pid}-${randomBytes(3).toString('hex')}`);
    fs.mkdirSync(this.root);
  }

  /** A directory below the root ("a" or "a/b"), parents made as needed. */
  dir(rel: string): string {
    const d = path.join(this.root, rel);
    fs.mkdirSync(d, { recursive: true });
    return d;
  }

  track(p: Prober): Prober {
    this.procs.push(p);
    return p;
  }

  /** End every prober by pid, then rmdir the tree bottom-up. Throws if anything is left. */
  async cleanup(): Promise<void> {
    for (const p of this.procs.splice(0)) await p.kill();
    if (fs.existsSync(this.root) && /populated 1/.test(fs.readFileSync(path.join(this.root, 'cgroup.events'), 'utf8'))) {
      // Only pids inside our own directory can be reached by this.
      fs.writeFileSync(path.join(this.root, 'cgroup.kill'), '1');
      const end = Date.now() + 5000;
      while (/populated 1/.test(fs.readFileSync(path.join(this.root, 'cgroup.events'), 'utf8')) && Date.now() < end) await sleep(20);
    }
    rmdirTree(this.root);
    if (fs.existsSync(this.root)) throw new Error(`test cgroup ${this.root} left behind`);
  }
}

function rmdirTree(dir: string): void {
  let entries: fs.Dirent[];
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true });
  } catch {
    return;
  }
  for (const e of entries) if (e.isDirectory()) rmdirTree(path.join(dir, e.name));
  for (let i = 0; ; i++) {
    try {
      fs.rmdirSync(dir);
      return;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return;
      if (code !== 'EBUSY' || i > 100) throw err;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
    }
  }
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Wait (15 s at most) until `want` loaded programs carry this name; programs go away when their last reference does, a removed cgroup's a little later. */
export async function waitLoaded(name: string, want: number): Promise<number> {
  const end = Date.now() + 15_000;
  let n = loadedPrograms(name).length;
  while (n !== want && Date.now() < end) {
    await sleep(50);
    n = loadedPrograms(name).length;
  }
  return n;
}

/** Device nodes in a temp dir: name -> path. */
export class DevNodes {
  readonly dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-devnodes-'));
  readonly paths: Record<string, string> = {};

  add(name: string, type: 'c' | 'b', major: number, minor: number): string {
    const p = path.join(this.dir, name);
    // Root-only (the umask's mode): the prober opens them as root, and no other user may reach a device through them.
    execFileSync('mknod', ['-m', '0600', p, type, String(major), String(minor)]);
    this.paths[name] = p;
    return p;
  }

  cleanup(): void {
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** The standard set: null 1:3, zero 1:5, fake GPUs 195:0-3, block loop 7:0. */
export function standardNodes(): DevNodes {
  const n = new DevNodes();
  n.add('null', 'c', 1, 3);
  n.add('zero', 'c', 1, 5);
  for (let i = 0; i < 4; i++) n.add(`nvidia${i}`, 'c', 195, i);
  n.add('loop0', 'b', 7, 0);
  return n;
}

export class Prober {
  private readonly lines: string[] = [];
  private waiters: ((l: string) => void)[] = [];
  private exited = false;
  private readonly exitPromise: Promise<void>;

  private constructor(readonly proc: ChildProcess) {
    const rl = readline.createInterface({ input: proc.stdout! });
    rl.on('line', (l) => {
      const w = this.waiters.shift();
      if (w) w(l);
      else this.lines.push(l);
    });
    this.exitPromise = new Promise((r) => proc.once('exit', () => {
      this.exited = true;
      r();
    }));
  }

  get pid(): number {
    return this.proc.pid!;
  }

  static async start(): Promise<Prober> {
    const proc = spawn('python3', ['-u', PROBER], { stdio: ['pipe', 'pipe', 'inherit'] });
    const p = new Prober(proc);
    const ready = JSON.parse(await p.next(10_000));
    if (ready.ready !== proc.pid) throw new Error(`prober said ${JSON.stringify(ready)}`);
    return p;
  }

  private next(timeoutMs = 10_000): Promise<string> {
    const l = this.lines.shift();
    if (l !== undefined) return Promise.resolve(l);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`prober ${this.pid}: no answer in ${timeoutMs} ms`)), timeoutMs);
      this.waiters.push((line) => {
        clearTimeout(t);
        resolve(line);
      });
    });
  }

  async ask(cmd: object, timeoutMs?: number): Promise<any> {
    this.proc.stdin!.write(JSON.stringify(cmd) + '\n');
    return JSON.parse(await this.next(timeoutMs));
  }

  /** Read one more answer line (for hammer, whose result follows "started"). */
  async answer(timeoutMs?: number): Promise<any> {
    return JSON.parse(await this.next(timeoutMs));
  }

  async open(p: string, mode: 'r' | 'w' | 'rw' = 'r'): Promise<string> {
    return (await this.ask({ op: 'open', path: p, mode })).r;
  }

  async mknod(p: string, type: 'c' | 'b', major: number, minor: number): Promise<string> {
    return (await this.ask({ op: 'mknod', path: p, type, major, minor })).r;
  }

  async access(p: string): Promise<string> {
    return (await this.ask({ op: 'access', path: p })).r;
  }

  /** Move into a cgroup directory and check /proc/self/cgroup agrees. */
  async moveTo(dir: string): Promise<void> {
    fs.writeFileSync(path.join(dir, 'cgroup.procs'), String(this.pid));
    const where = (await this.ask({ op: 'cgroup' })).r;
    if (path.join(MOUNT, where) !== dir) throw new Error(`prober ${this.pid} is in ${where}, not ${dir}`);
  }

  async kill(): Promise<void> {
    if (this.exited) return;
    this.proc.kill('SIGKILL'); // by pid: ChildProcess.kill signals this.pid only
    await this.exitPromise;
  }
}
