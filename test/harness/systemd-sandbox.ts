/**
 * test/harness/systemd-sandbox: a private, real systemd 252 (user manager) plus
 * its own dbus-daemon, in a mount + cgroup namespace, for tests of the systemd
 * path. It owns one cgroup directory per sandbox and the processes in it; it
 * never signals anything it did not start (every kill is by pid or through the
 * sandbox's own cgroup.kill), never moves the test runner into a test cgroup,
 * and leaves nothing mounted on the host.
 *
 * Layout (host view; the cgroup namespace's root is <cgroupDir>):
 *
 *   <cgroup2 mount>/cgstep-sbx-<name>-<owner pid>-<rand>/   sandbox.cgroupDir
 *     harness/        the namespace holder (`sleep infinity`), dbus-daemon, and
 *                     by default every command run through exec()/spawn()
 *     init.scope/     systemd --user (so its cgroup root is the namespace root)
 *     app.slice/ ...  what systemd creates: units, systemd-run services,
 *     system.slice/   the node scope (<node>_slurmstepd.scope) ...
 *   /run/cgstep-sbx/<name>-<owner pid>-<rand>/          sandbox.runtimeDir
 *     bus             the dbus-daemon socket: sandbox.busAddress, the same
 *                     path inside and outside (so the test runner's own D-Bus
 *                     clients reach the sandbox's systemd directly)
 *     systemd/        systemd's private and notify sockets (XDG_RUNTIME_DIR)
 *     config/         XDG_CONFIG_HOME for systemd only: the start target and
 *                     masks for dbus.socket/dbus.service (the distribution's
 *                     user dbus.socket would otherwise steal `bus` from our
 *                     dbus-daemon)
 *     systemd.log     systemd's own log (console target), for failures
 *
 * How the launcher gets into the namespace (DESIGN.md's verified recipe): a
 * helper `sh` is spawned that first blocks reading a line on stdin; the test
 * runner writes the helper's pid into <cgroupDir>/cgroup.procs and then sends
 * the line; the helper execs `unshare --mount --cgroup --propagation private`
 * into the holder script, whose cgroup namespace root is therefore
 * <cgroupDir>. The holder mounts cgroup2 on /sys/fs/cgroup and a tmpfs on
 * /run/systemd (with /run/systemd/system, without which systemd --user exits),
 * moves itself to harness/, forks dbus-daemon, starts systemd --user in
 * init.scope, and becomes `sleep infinity` (the pid nsenter targets). Nothing
 * mounted in the private namespace is visible on the host, and it disappears
 * with its last process.
 *
 * Commands inside (exec/spawn/systemctl): `sh` writes its own pid into the
 * requested sandbox cgroup (harness/ unless opts.cgroup says otherwise), then
 * execs `nsenter -t <holder> -m -C --wd=<cwd>` into the command, with
 * XDG_RUNTIME_DIR, DBUS_SESSION_BUS_ADDRESS and DBUS_SYSTEM_BUS_ADDRESS all
 * pointing at the sandbox (so a command that talks to "the system bus" talks
 * to the sandbox's systemd, never to the host's). Inside, the cgroup2 mount is
 * /sys/fs/cgroup and /proc/self/cgroup reads relative to the sandbox root.
 * A process must be inside the sandbox tree before the sandbox's systemd can
 * move it (the kernel's cgroup-namespace rule), which is why infinity-like
 * processes for StartTransientUnit are started with spawn().
 *
 * stop(): SIGTERM systemd and dbus-daemon by pid (after checking that each pid
 * still lives in this sandbox's cgroup), a short wait, cgroup.kill on the
 * sandbox root for everything left (holder included), wait for `populated 0`,
 * rmdir bottom-up, remove the runtime directory. An exit hook writes
 * cgroup.kill for sandboxes a crashed test never stopped, and startSandbox()
 * sweeps leftovers whose owner pid is dead.
 *
 * Start-up (startSandbox() to systemd reporting "running") measured 86-110 ms
 * on the development machines, idle; up to ~0.4 s with the other test files
 * running beside it (sandbox.startupMs). stop() takes about 60 ms.
 * Needs root, unshare/nsenter (util-linux), dbus-daemon, /lib/systemd/systemd
 * (252 verified) and a cgroup2 mount; sandboxSupport() says what is missing.
 */
import { spawn as spawnChild, type ChildProcess, type SpawnOptions, type StdioOptions } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { isRunning as alive } from '../../src/proc/index.js';
import { connectSystemd, type SystemdManager } from '../../src/systemd/manager.js';
import { which } from '../helpers/which.js';

export const SYSTEMD_BIN = '/lib/systemd/systemd';
export const RUNTIME_PARENT = '/run/cgstep-sbx';
/** The cgroup2 mount point every process inside the sandbox sees. */
export const INNER_CGROUP_MOUNT = '/sys/fs/cgroup';
const PREFIX = 'cgstep-sbx-';
const START_TARGET = 'cgstep-sandbox.target';

export interface SandboxOptions {
  /** Short label, part of the cgroup and runtime directory names ([a-z0-9-]). */
  name: string;
  /** Give up starting after this long (default 20 s: the machines are shared). */
  startTimeoutMs?: number;
  /** SYSTEMD_LOG_LEVEL of the sandbox's systemd (default info). */
  systemdLogLevel?: string;
}

export interface ExecOptions {
  /** Sandbox cgroup (relative to its root) to run in; created if missing. Default "harness". */
  cgroup?: string;
  /** Extra environment (undefined removes a variable). */
  env?: Record<string, string | undefined>;
  /** Working directory inside (default: the test runner's cwd; the host tree is visible inside). */
  cwd?: string;
  /** Written to stdin, then stdin is closed. */
  input?: string;
  /** Kill the command (by pid) after this long; default 30 s. */
  timeoutMs?: number;
}

export interface SpawnInsideOptions {
  cgroup?: string;
  env?: Record<string, string | undefined>;
  cwd?: string;
  stdio?: StdioOptions;
}

export interface ExecResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface Sandbox {
  readonly name: string;
  /** Host path of the sandbox's cgroup root (the namespace's /sys/fs/cgroup). */
  readonly cgroupDir: string;
  /** XDG_RUNTIME_DIR, the same path inside and on the host. */
  readonly runtimeDir: string;
  /** `unix:path=<runtimeDir>/bus`, usable from the host and inside. */
  readonly busAddress: string;
  /** The environment exec()/spawn() give commands inside. */
  readonly env: Readonly<Record<string, string>>;
  readonly holderPid: number;
  readonly systemdPid: number;
  readonly dbusPid: number;
  /** Milliseconds from startSandbox() to systemd reporting running. */
  readonly startupMs: number;
  /** systemd's own log (console target). */
  readonly logFile: string;
  /** Host path of a cgroup given as systemd names it ("/system.slice/x.scope"). */
  hostPath(cgroup: string): string;
  /** Run a command inside and collect its output (never throws on a non-zero exit). */
  exec(cmd: string[], opts?: ExecOptions): Promise<ExecResult>;
  /** Like exec but rejects, with stdout/stderr in the message, unless it exits 0. */
  run(cmd: string[], opts?: ExecOptions): Promise<string>;
  /**
   * Start a long-running command inside. Resolves once the process is in its
   * sandbox cgroup and in the sandbox's namespaces, so its pid can be handed to
   * the sandbox's systemd at once. stdio defaults to 'ignore'.
   */
  spawn(cmd: string[], opts?: SpawnInsideOptions): Promise<ChildProcess>;
  /** `systemctl --user ...args` inside (exit status in the result). */
  systemctl(...args: string[]): Promise<ExecResult>;
  /** The last lines of systemd's log. */
  logTail(lines?: number): string;
  /** Stop everything by pid, remove the cgroup tree and the runtime directory. Idempotent. */
  stop(): Promise<void>;
}

const live = new Set<SandboxImpl>();
let exitHookInstalled = false;

/** What this machine lacks to run a sandbox; ok when nothing. */
export function sandboxSupport(): { ok: boolean; reason?: string } {
  if (process.getuid?.() !== 0) return { ok: false, reason: 'the systemd sandbox needs root' };
  if (!fs.existsSync(SYSTEMD_BIN)) return { ok: false, reason: `missing ${SYSTEMD_BIN} (systemd)` };
  for (const tool of ['unshare', 'nsenter', 'mount', 'mkfifo', 'dbus-daemon', 'systemctl', 'systemd-run']) {
    if (!which(tool)) return { ok: false, reason: `missing ${tool} on PATH (needs util-linux, coreutils, dbus-daemon and systemd)` };
  }
  if (!hostCgroup2Mount()) return { ok: false, reason: 'no cgroup2 mount in /proc/self/mountinfo' };
  return { ok: true };
}

/** The host's cgroup2 mount whose root is the hierarchy root (override: CGSTEP_SANDBOX_CGROUP_PARENT). */
export function hostCgroup2Mount(): string | null {
  if (process.env.CGSTEP_SANDBOX_CGROUP_PARENT) return process.env.CGSTEP_SANDBOX_CGROUP_PARENT;
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const [pre, post] = line.split(' - ');
    if (!post || post.split(' ')[0] !== 'cgroup2') continue;
    const f = pre.split(' ');
    if (f[3] === '/') return f[4];
  }
  return null;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** The pid's cgroup2 path as the test runner's cgroup namespace sees it. */
function cgroupOf(pid: number): string | null {
  try {
    const line = fs.readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n').find((l) => l.startsWith('0::'));
    return line ? line.slice(3) : null;
  } catch {
    return null;
  }
}

function readPids(file: string): number[] {
  try {
    return fs.readFileSync(file, 'utf8').split('\n').filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

async function waitUntil(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const end = Date.now() + timeoutMs;
  let step = 1;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(step);
    step = Math.min(step * 2, 25);
  }
}

/** Every directory of a cgroup tree, deepest first. */
function treeBottomUp(root: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) if (e.isDirectory()) walk(path.join(d, e.name));
    out.push(d);
  };
  walk(root);
  return out;
}

function populated(dir: string): boolean {
  try {
    return /^populated 1$/m.test(fs.readFileSync(path.join(dir, 'cgroup.events'), 'utf8'));
  } catch {
    return false;
  }
}

/** Kill everything in a cgroup tree we own, wait until it is empty, rmdir it bottom-up. */
async function removeCgroupTree(dir: string, timeoutMs = 5000): Promise<void> {
  if (!fs.existsSync(dir)) return;
  try {
    fs.writeFileSync(path.join(dir, 'cgroup.kill'), '1');
  } catch (err) {
    // Kernels before 5.14 have no cgroup.kill: SIGKILL every pid in the tree instead.
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    for (const d of treeBottomUp(dir)) for (const pid of readPids(path.join(d, 'cgroup.procs'))) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  }
  await waitUntil(() => !populated(dir), timeoutMs, `${dir} to become empty after cgroup.kill`);
  for (const d of treeBottomUp(dir)) {
    for (let i = 0; ; i++) {
      try {
        fs.rmdirSync(d);
        break;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOENT') break;
        // A just-emptied cgroup can report EBUSY for a moment.
        if (code === 'EBUSY' && i < 50) {
          await sleep(10);
          continue;
        }
        throw new Error(`rmdir ${d}: ${code}`);
      }
    }
  }
}

/** Remove sandboxes left behind by test runs whose owner process is gone. */
export async function sweepStaleSandboxes(): Promise<string[]> {
  const mount = hostCgroup2Mount();
  const removed: string[] = [];
  if (!mount) return removed;
  const stale = (n: string) => {
    const m = /-(\d+)-[0-9a-f]{4}$/.exec(n);
    return m !== null && !alive(Number(m[1]));
  };
  for (const n of fs.readdirSync(mount)) {
    if (!n.startsWith(PREFIX) || !stale(n)) continue;
    const dir = path.join(mount, n);
    try {
      await removeCgroupTree(dir);
      removed.push(dir);
    } catch {
      /* someone else's trouble; leave it */
    }
  }
  for (const n of fs.existsSync(RUNTIME_PARENT) ? fs.readdirSync(RUNTIME_PARENT) : []) {
    if (stale(n)) fs.rmSync(path.join(RUNTIME_PARENT, n), { recursive: true, force: true });
  }
  return removed;
}

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    for (const sb of live) {
      try {
        fs.writeFileSync(path.join(sb.cgroupDir, 'cgroup.kill'), '1');
      } catch {
        /* best effort; the next startSandbox() sweeps the directories */
      }
    }
  });
}

const HOLDER_SCRIPT = `set -eu
mount -t cgroup2 none /sys/fs/cgroup
mkdir /sys/fs/cgroup/harness /sys/fs/cgroup/init.scope
echo $$ > /sys/fs/cgroup/harness/cgroup.procs
mount -t tmpfs -o mode=0755 cgstep-sbx /run/systemd
mkdir -p /run/systemd/system
mkfifo "$SBX_RT/kmsg"
cat 0<>"$SBX_RT/kmsg" >>"$SBX_RT/systemd.log" 2>&1 &
mount --bind "$SBX_RT/kmsg" /dev/kmsg
mount --bind /dev/null /dev/console
env XDG_CONFIG_HOME="$SBX_RT/config" SYSTEMD_LOG_TARGET=kmsg SYSTEMD_LOG_COLOR=0 SYSTEMD_LOG_LEVEL="$SBX_LOGLEVEL" \\
  sh -c 'echo $$ > /sys/fs/cgroup/init.scope/cgroup.procs && exec ${SYSTEMD_BIN} --user --unit=${START_TARGET}' \\
  </dev/null >>"$SBX_RT/systemd.log" 2>&1 &
echo $! > "$SBX_RT/systemd.pid"
echo started
exec sleep infinity </dev/null >/dev/null 2>&1
`;

/**
 * The sandbox's own bus, run by its systemd as a user session does: systemd
 * --user connects to its API bus only while dbus.socket and dbus.service are
 * active units (manager_dbus_is_running), so a dbus-daemon started by hand
 * beside it is never used. These override the distribution's units.
 */
const UNITS: Record<string, string> = {
  [START_TARGET]: '[Unit]\nDescription=cgstep test sandbox\nWants=dbus.socket dbus.service\nAfter=dbus.socket dbus.service\n',
  'dbus.socket': '[Unit]\nDescription=sandbox D-Bus socket\n\n[Socket]\nListenStream=%t/bus\n',
  'dbus.service':
    '[Unit]\nDescription=sandbox D-Bus\nRequires=dbus.socket\n\n[Service]\nType=notify\nNotifyAccess=main\n' +
    'ExecStart=/usr/bin/dbus-daemon --session --address=systemd: --nofork --nopidfile --systemd-activation --nosyslog\n',
};

class SandboxImpl implements Sandbox {
  readonly name: string;
  readonly cgroupDir: string;
  readonly runtimeDir: string;
  readonly busAddress: string;
  readonly env: Record<string, string>;
  readonly logFile: string;
  holderPid = 0;
  systemdPid = 0;
  dbusPid = 0;
  startupMs = 0;
  private stopped: Promise<void> | null = null;
  private readonly rel: string;
  private holderNs = { mnt: '', cgroup: '' };
  /** The runner's own cgroup when the sandbox started (relative to the host mount). */
  private readonly runnerCgroup = cgroupOf(process.pid);

  private readonly mount: string;

  constructor(name: string, id: string, mount: string) {
    this.name = name;
    this.mount = mount;
    this.rel = `/${PREFIX}${id}`;
    this.cgroupDir = path.join(mount, this.rel);
    this.runtimeDir = path.join(RUNTIME_PARENT, id);
    this.busAddress = `unix:path=${this.runtimeDir}/bus`;
    this.logFile = path.join(this.runtimeDir, 'systemd.log');
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(process.env)) {
      if (v === undefined) continue;
      // Nothing of the runner's own service context leaks in.
      if (/^(NOTIFY_SOCKET|WATCHDOG_(USEC|PID)|INVOCATION_ID|LISTEN_(FDS|PID|FDNAMES)|JOURNAL_STREAM|MANAGERPID)$/.test(k)) continue;
      env[k] = v;
    }
    Object.assign(env, {
      XDG_RUNTIME_DIR: this.runtimeDir,
      DBUS_SESSION_BUS_ADDRESS: this.busAddress,
      DBUS_SYSTEM_BUS_ADDRESS: this.busAddress,
      SYSTEMD_PAGER: '',
      SYSTEMD_COLORS: '0',
      PAGER: 'cat',
    });
    this.env = env;
  }

  hostPath(cgroup: string): string {
    return path.join(this.cgroupDir, cgroup);
  }

  logTail(lines = 30): string {
    try {
      return fs.readFileSync(this.logFile, 'utf8').split('\n').slice(-lines - 1).join('\n');
    } catch {
      return '(no systemd log)';
    }
  }

  async start(o: SandboxOptions): Promise<void> {
    const t0 = performance.now();
    fs.mkdirSync(this.runtimeDir, { recursive: true, mode: 0o700 });
    const units = path.join(this.runtimeDir, 'config/systemd/user');
    fs.mkdirSync(units, { recursive: true });
    for (const [unit, text] of Object.entries(UNITS)) fs.writeFileSync(path.join(units, unit), text);
    fs.writeFileSync(path.join(this.runtimeDir, 'holder.sh'), HOLDER_SCRIPT);
    fs.mkdirSync(this.cgroupDir);
    live.add(this);
    installExitHook();

    const holder = spawnChild('sh', ['-c', 'read go && exec unshare --mount --cgroup --propagation private sh "$0"', path.join(this.runtimeDir, 'holder.sh')], {
      env: { ...this.env, SBX_RT: this.runtimeDir, SBX_LOGLEVEL: o.systemdLogLevel ?? 'info' },
      stdio: ['pipe', 'pipe', 'pipe'],
      detached: true,
    });
    let out = '';
    let err = '';
    holder.stdout!.on('data', (d) => (out += d));
    holder.stderr!.on('data', (d) => (err += d));
    let exited: string | null = null;
    holder.once('exit', (code, sig) => (exited = `exit ${code ?? sig}`));
    holder.once('error', (e) => (exited = e.message));
    await waitUntil(() => holder.pid !== undefined || exited !== null, 5000, 'the sandbox launcher to start');
    if (exited) throw new Error(`sandbox launcher: ${exited}`);
    this.holderPid = holder.pid!;
    // Into the sandbox cgroup first, so that unshare --cgroup makes it the namespace root.
    fs.writeFileSync(path.join(this.cgroupDir, 'cgroup.procs'), String(this.holderPid));
    holder.stdin!.on('error', () => undefined); // a holder that died is reported below
    holder.stdin!.end('go\n');
    const timeout = o.startTimeoutMs ?? 20000;
    await waitUntil(() => out.includes('started') || exited !== null, timeout, 'the sandbox holder to set up').catch((e) => {
      throw new Error(`${e.message}; holder stderr: ${err}`);
    });
    if (exited) throw new Error(`sandbox holder failed (${exited}): ${err.trim()}`);
    holder.stdout!.destroy();
    holder.stderr!.destroy();
    holder.unref();
    this.systemdPid = Number(fs.readFileSync(path.join(this.runtimeDir, 'systemd.pid'), 'utf8'));
    this.holderNs = { mnt: fs.readlinkSync(`/proc/${this.holderPid}/ns/mnt`), cgroup: fs.readlinkSync(`/proc/${this.holderPid}/ns/cgroup`) };

    // Ready when systemd owns its bus name and reports running (or degraded).
    const end = Date.now() + timeout;
    let last = 'no answer yet';
    let step = 2;
    for (;;) {
      if (!alive(this.systemdPid)) throw new Error(`systemd --user (pid ${this.systemdPid}) exited during start-up:\n${this.logTail()}`);
      let m: SystemdManager | undefined;
      try {
        m = await connectSystemd({ address: this.busAddress, timeoutMs: 2000 });
        const state = await m.systemState();
        last = `SystemState=${state}`;
        if (state === 'running' || state === 'degraded') break;
      } catch (e) {
        last = (e as Error).message;
      } finally {
        await m?.close();
      }
      if (Date.now() > end) throw new Error(`systemd in the sandbox did not become ready in ${timeout} ms (${last}):\n${this.logTail()}`);
      await sleep(step);
      step = Math.min(step * 2, 50);
    }
    this.startupMs = Math.round(performance.now() - t0);
    const main = await this.systemctl('show', '-p', 'MainPID', '--value', 'dbus.service');
    this.dbusPid = Number(main.stdout.trim()) || 0;
  }

  private ensureCgroup(rel: string): string {
    const normalized = path.posix.normalize(`/${rel}`);
    if (normalized.startsWith('/..')) throw new Error(`cgroup ${rel} is outside the sandbox`);
    const dir = path.join(this.cgroupDir, normalized);
    fs.mkdirSync(dir, { recursive: true });
    return dir;
  }

  private childEnv(extra?: Record<string, string | undefined>): Record<string, string> {
    const env = { ...this.env };
    for (const [k, v] of Object.entries(extra ?? {})) {
      if (v === undefined) delete env[k];
      else env[k] = v;
    }
    return env;
  }

  exec(cmd: string[], opts: ExecOptions = {}): Promise<ExecResult> {
    const args = this.wrapArgs(cmd, opts.cgroup, opts.cwd);
    return new Promise((resolve, reject) => {
      const child = spawnChild('sh', args, { env: this.childEnv(opts.env), stdio: ['pipe', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout!.on('data', (d) => (stdout += d));
      child.stderr!.on('data', (d) => (stderr += d));
      const timer = setTimeout(() => {
        if (child.pid) {
          try {
            process.kill(child.pid, 'SIGKILL');
          } catch {
            /* gone */
          }
        }
        stderr += `\n[sandbox] killed after ${opts.timeoutMs ?? 30000} ms`;
      }, opts.timeoutMs ?? 30000);
      child.once('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
      child.once('close', (code, signal) => {
        clearTimeout(timer);
        resolve({ code, signal, stdout, stderr });
      });
      // A child that exits before reading its input (an agent refusing its options) makes the write EPIPE.
      child.stdin!.on('error', () => undefined);
      child.stdin!.end(opts.input ?? '');
    });
  }

  /** sh args that move sh into the cgroup, then nsenter into the command. */
  private wrapArgs(cmd: string[], cgroup: string | undefined, cwd: string | undefined): string[] {
    if (this.stopped) throw new Error(`sandbox ${this.name} is stopped`);
    if (cmd.length === 0) throw new Error('empty command');
    const procs = path.join(this.ensureCgroup(cgroup ?? 'harness'), 'cgroup.procs');
    // $0 = cgroup.procs, $1 = holder pid, $2 = cwd, then the command.
    return ['-c', 'p=$0 t=$1 w=$2; shift 2; echo $$ > "$p" || exit 125; exec nsenter -t "$t" -m -C --wd="$w" -- "$@"', procs, String(this.holderPid), cwd ?? process.cwd(), ...cmd];
  }

  async run(cmd: string[], opts?: ExecOptions): Promise<string> {
    const r = await this.exec(cmd, opts);
    if (r.code !== 0) throw new Error(`${cmd.join(' ')} exited ${r.code ?? r.signal}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
    return r.stdout;
  }

  async spawn(cmd: string[], opts: SpawnInsideOptions = {}): Promise<ChildProcess> {
    const args = this.wrapArgs(cmd, opts.cgroup, opts.cwd);
    const so: SpawnOptions = { env: this.childEnv(opts.env), stdio: opts.stdio ?? 'ignore' };
    const child = spawnChild('sh', args, so);
    let failed: string | null = null;
    child.once('error', (e) => (failed = e.message));
    child.once('exit', (code, sig) => (failed ??= `exited ${code ?? sig} before it was inside the sandbox`));
    await waitUntil(
      () => {
        if (failed) return true;
        const pid = child.pid;
        if (!pid) return false;
        try {
          return fs.readlinkSync(`/proc/${pid}/ns/mnt`) === this.holderNs.mnt && fs.readlinkSync(`/proc/${pid}/ns/cgroup`) === this.holderNs.cgroup;
        } catch {
          return false;
        }
      },
      5000,
      `${cmd[0]} to enter the sandbox`,
    );
    if (failed) throw new Error(`${cmd.join(' ')}: ${failed}`);
    return child;
  }

  systemctl(...args: string[]): Promise<ExecResult> {
    return this.exec(['systemctl', '--user', '--no-pager', ...args]);
  }

  stop(): Promise<void> {
    this.stopped ??= this.doStop();
    return this.stopped;
  }

  /** Is pid still a process of this sandbox (guards against a recycled pid)? */
  private ours(pid: number): boolean {
    const cg = pid > 0 ? cgroupOf(pid) : null;
    return cg !== null && (cg === this.rel || cg.startsWith(`${this.rel}/`)) && alive(pid);
  }

  private async doStop(): Promise<void> {
    try {
      // Never kill the test runner: if something (a test handing its own pid to
      // the sandbox's systemd, which the kernel allows without nsdelegate) moved
      // it into the tree, put it back where it was first.
      if (this.ours(process.pid) && this.runnerCgroup !== null) {
        fs.writeFileSync(path.join(this.mount, this.runnerCgroup, 'cgroup.procs'), String(process.pid));
      }
      if (this.ours(process.pid)) throw new Error(`the test runner (pid ${process.pid}) is inside sandbox ${this.cgroupDir}; not killing it`);
      for (const pid of [this.systemdPid, this.dbusPid]) {
        try {
          if (this.ours(pid)) process.kill(pid, 'SIGTERM');
        } catch (err) {
          // Exited (and reaped) between the check and the signal.
          if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
        }
      }
      // systemd --user stops its units on SIGTERM; give it a moment, then kill what is left.
      await waitUntil(() => !this.ours(this.systemdPid) && !this.ours(this.dbusPid), 1000, 'systemd and dbus-daemon to exit').catch(() => {});
      await removeCgroupTree(this.cgroupDir);
    } finally {
      live.delete(this);
      fs.rmSync(this.runtimeDir, { recursive: true, force: true });
    }
  }
}

/** Start a sandbox; on any failure it is torn down before the error is thrown. */
export async function startSandbox(o: SandboxOptions): Promise<Sandbox> {
  const support = sandboxSupport();
  if (!support.ok) throw new Error(`cannot start a systemd sandbox: ${support.reason}`);
  const label = o.name.toLowerCase().replace(/[^a-z0-9-]+/g, '-').slice(0, 24) || 'sbx';
  await sweepStaleSandboxes();
  const id = `${label}-${process.pid}-${randomBytes(2).toString('hex')}`;
  const sb = new SandboxImpl(label, id, hostCgroup2Mount()!);
  try {
    await sb.start(o);
  } catch (err) {
    // CGSTEP_SANDBOX_KEEP=1 leaves a sandbox that failed to start in place, to look at.
    if (process.env.CGSTEP_SANDBOX_KEEP !== '1') await sb.stop().catch(() => {});
    throw err;
  }
  return sb;
}
