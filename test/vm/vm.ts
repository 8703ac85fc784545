/**
 * test/vm/vm: a full node in a VM for tests (DESIGN.md, "A full node in a VM").
 *
 * What it does, all of it cached and idempotent:
 *   - tools: qemu-system-x86_64 and a static busybox, apt-get installed only when
 *     missing (packages qemu-system-x86, busybox-static; test/helpers/apt);
 *   - kernel: the Debian kernel `apt-cache depends linux-image-amd64` names (the
 *     -cloud- flavour lacks 9p), fetched with `apt-get download` and unpacked with
 *     `dpkg -x` into a temporary directory, of which only vmlinuz and the eleven
 *     modules the initramfs needs are kept in the cache (never installed into /boot);
 *   - initramfs: busybox + those modules + test/vm/init.sh as /init, packed with
 *     `busybox cpio -o -H newc` and gzip; its name carries a hash of its inputs.
 * The cache is $CGSTEP_VM_CACHE, default /var/cache/cgstep-vm.
 *
 * bootVm() boots it with the host's / shared read-only over 9p (tag hostroot)
 * and a fresh writable temp directory shared as tag vmout (mounted at /cgstep-vm
 * in the guest), which carries the job script in and the results out. The
 * guest's root is an overlay (9p lower, tmpfs upper), so the project runs from
 * the host's tree exactly as built there (same node, same compiled addon), and
 * nothing the guest writes reaches the host except through /cgstep-vm.
 * Two modes (kernel command line cgstep.mode=):
 *   busybox  /init mounts proc, sys, dev, cgroup2, tmpfs on /tmp and /run in the
 *            overlay, chroots into it, runs /cgstep-vm/job.sh, powers off;
 *   systemd  /init runs /cgstep-vm/prepare.sh on the overlay (units, wrappers), then
 *            switch_root to the host's /lib/systemd/systemd as PID 1 with
 *            systemd.unit= naming the lane's target; the job runs as a service and
 *            its SuccessAction/FailureAction powers the guest off.
 * qemu is killed by pid when the guest does not finish in time (and by an exit
 * hook if the test process dies first); the share directory is removed after
 * its files have been read.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { INSTALL_LOCK, aptInstall } from '../helpers/apt.js';
import { which } from '../helpers/which.js';

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(here, '../..');
export const CACHE = process.env.CGSTEP_VM_CACHE || '/var/cache/cgstep-vm';
/** Where the writable share is mounted in the guest. */
export const GUEST_OUT = '/cgstep-vm';
/** Load order matters: each needs the ones before it. overlay for the writable root. */
export const MODULES = ['virtio_ring', 'virtio', 'virtio_pci_modern_dev', 'virtio_pci_legacy_dev', 'virtio_pci', 'netfs', 'fscache', '9pnet', '9pnet_virtio', '9p', 'overlay'];
const BUSYBOX_CANDIDATES = ['/bin/busybox', '/usr/bin/busybox'];

export type Log = (msg: string) => void;

export class VmSetupError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'VmSetupError';
  }
}

function run(cmd: string, args: string[], opts: { cwd?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): { code: number | null; out: string } {
  const r = spawnSync(cmd, args, { cwd: opts.cwd, encoding: 'utf8', timeout: opts.timeoutMs ?? 300000, env: opts.env ?? process.env });
  return { code: r.error ? null : r.status, out: `${r.stdout ?? ''}${r.stderr ?? ''}${r.error ? String(r.error) : ''}` };
}

/** A static busybox (the initramfs has no libc). */
function staticBusybox(): string | null {
  for (const p of BUSYBOX_CANDIDATES) {
    if (!fs.existsSync(p)) continue;
    const head = fs.readFileSync(p).subarray(0, 4096);
    // A dynamically linked ELF names its interpreter in a PT_INTERP segment: look for the loader path.
    if (!head.includes(Buffer.from('/lib64/ld-linux')) && !head.includes(Buffer.from('ld-linux-x86-64'))) return p;
  }
  return null;
}

export interface VmTools { qemu: string; busybox: string }

export function ensureTools(log: Log): VmTools {
  const missing: string[] = [];
  if (!which('qemu-system-x86_64')) missing.push('qemu-system-x86');
  if (!staticBusybox()) missing.push('busybox-static');
  if (missing.length) {
    if (!which('apt-get')) throw new VmSetupError(`the VM lane needs ${missing.join(', ')} (qemu-system-x86_64, a static busybox) and there is no apt-get here to install them`);
    log(`apt-get install ${missing.join(' ')} (missing on this machine)`);
    const failed = aptInstall(missing, { noRecommends: true });
    if (failed) throw new VmSetupError(`the VM lane needs ${missing.join(', ')}: ${failed}`);
  }
  const qemu = which('qemu-system-x86_64');
  const busybox = staticBusybox();
  if (!qemu) throw new VmSetupError('qemu-system-x86_64 is not on the PATH after installing qemu-system-x86');
  if (!busybox) throw new VmSetupError(`no static busybox at ${BUSYBOX_CANDIDATES.join(' or ')} after installing busybox-static`);
  return { qemu, busybox };
}

export interface VmKernel { version: string; vmlinuz: string; modulesDir: string }

/** The kernel package apt would install (linux-image-amd64's dependency), e.g. 6.1.0-56-amd64. */
function wantedKernelVersion(): string | null {
  if (process.env.CGSTEP_VM_KERNEL) return process.env.CGSTEP_VM_KERNEL;
  const r = run('apt-cache', ['depends', 'linux-image-amd64'], { timeoutMs: 60000 });
  const m = /Depends: linux-image-(\d[^\s]*-amd64)\b/.exec(r.out);
  return m ? m[1] : null;
}

function cachedKernels(): string[] {
  try {
    return fs.readdirSync(CACHE).filter((d) => d.startsWith('kernel-') && fs.existsSync(path.join(CACHE, d, 'complete'))).map((d) => d.slice('kernel-'.length)).sort();
  } catch {
    return [];
  }
}

export function ensureKernel(log: Log): VmKernel {
  let version = wantedKernelVersion();
  const cached = cachedKernels();
  if (!version) {
    if (!cached.length) throw new VmSetupError('cannot tell which kernel to use: `apt-cache depends linux-image-amd64` names none (set CGSTEP_VM_KERNEL=<ver>-amd64) and none is cached in ' + CACHE);
    version = cached[cached.length - 1];
    log(`apt-cache names no kernel; using the cached ${version}`);
  }
  if (/cloud/.test(version)) throw new VmSetupError(`kernel ${version}: the -cloud- flavour has no 9p; use a plain -amd64 kernel`);
  const dir = path.join(CACHE, `kernel-${version}`);
  const k: VmKernel = { version, vmlinuz: path.join(dir, 'vmlinuz'), modulesDir: path.join(dir, 'modules') };
  if (fs.existsSync(path.join(dir, 'complete'))) return k;
  if (!which('apt-get') || !which('dpkg')) throw new VmSetupError(`kernel ${version} is not cached in ${dir} and there is no apt-get/dpkg here to fetch it`);
  fs.mkdirSync(CACHE, { recursive: true });
  const tmp = fs.mkdtempSync(path.join(CACHE, '.fetch-'));
  try {
    log(`apt-get download linux-image-${version} (into ${tmp}, unpacked with dpkg -x; nothing goes to /boot)`);
    // apt's sandbox user cannot write into a root-only directory: let it.
    fs.chmodSync(tmp, 0o755);
    let r = run('apt-get', ['download', `linux-image-${version}`], { cwd: tmp, timeoutMs: 600000 });
    if (r.code !== 0) {
      // Under the harnesses' install lock: apt-get update cannot run beside an install.
      run('flock', [INSTALL_LOCK, 'apt-get', 'update', '-q'], { timeoutMs: 300000 });
      r = run('apt-get', ['download', `linux-image-${version}`], { cwd: tmp, timeoutMs: 600000 });
    }
    const deb = fs.readdirSync(tmp).find((f) => f.endsWith('.deb'));
    if (r.code !== 0 || !deb) throw new VmSetupError(`apt-get download linux-image-${version} failed (exit ${r.code}):\n${r.out.slice(-2000)}`);
    const x = path.join(tmp, 'x');
    r = run('dpkg', ['-x', path.join(tmp, deb), x], { timeoutMs: 300000 });
    if (r.code !== 0) throw new VmSetupError(`dpkg -x ${deb} failed:\n${r.out.slice(-2000)}`);
    const stage = path.join(tmp, 'stage');
    fs.mkdirSync(path.join(stage, 'modules'), { recursive: true });
    fs.copyFileSync(path.join(x, 'boot', `vmlinuz-${version}`), path.join(stage, 'vmlinuz'));
    const found = new Map<string, string>();
    const walk = (d: string) => {
      for (const e of fs.readdirSync(d, { withFileTypes: true })) {
        const p = path.join(d, e.name);
        if (e.isDirectory()) walk(p);
        else {
          const m = /^(.+)\.ko(\.xz|\.zst|\.gz)?$/.exec(e.name);
          if (m && MODULES.includes(m[1])) {
            if (m[2]) throw new VmSetupError(`module ${e.name} is compressed; busybox insmod wants a plain .ko`);
            found.set(m[1], p);
          }
        }
      }
    };
    walk(path.join(x, 'lib', 'modules', version));
    const absent = MODULES.filter((m) => !found.has(m));
    // A module built into the kernel is fine (init.sh skips absent files).
    const config = fs.readFileSync(path.join(x, 'boot', `config-${version}`), 'utf8');
    if (!/^CONFIG_NET_9P(=y|=m)/m.test(config) || !/^CONFIG_9P_FS(=y|=m)/m.test(config)) throw new VmSetupError(`kernel ${version} has no 9p support`);
    if (absent.length) log(`modules not found as files (built in?): ${absent.join(' ')}`);
    for (const [m, p] of found) fs.copyFileSync(p, path.join(stage, 'modules', `${m}.ko`));
    fs.writeFileSync(path.join(stage, 'complete'), `${deb}\n`);
    if (!fs.existsSync(path.join(dir, 'complete'))) {
      fs.rmSync(dir, { recursive: true, force: true });
      try {
        fs.renameSync(stage, dir);
      } catch (err) {
        // Another run of the lane finished the same kernel first.
        if (!fs.existsSync(path.join(dir, 'complete'))) throw err;
      }
    }
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  return k;
}

export interface VmAssets extends VmTools { kernel: VmKernel; initrd: string }

/** The initramfs for this kernel, init.sh and busybox, built once. */
export function ensureInitramfs(tools: VmTools, kernel: VmKernel, log: Log): string {
  const init = fs.readFileSync(path.join(here, 'init.sh'));
  const h = createHash('sha256').update(init).update(fs.readFileSync(tools.busybox)).update(kernel.version).update(MODULES.join(',')).digest('hex').slice(0, 16);
  const file = path.join(CACHE, `initrd-${kernel.version}-${h}.gz`);
  if (fs.existsSync(file)) return file;
  log(`building ${file}`);
  const tmp = fs.mkdtempSync(path.join(CACHE, '.initrd-'));
  try {
    const root = path.join(tmp, 'root');
    for (const d of ['bin', 'mods', 'proc', 'sys', 'dev', 'lower', 'upper', 'newroot', 'tmp']) fs.mkdirSync(path.join(root, d), { recursive: true });
    fs.copyFileSync(tools.busybox, path.join(root, 'bin', 'busybox'));
    fs.chmodSync(path.join(root, 'bin', 'busybox'), 0o755);
    fs.writeFileSync(path.join(root, 'init'), init, { mode: 0o755 });
    for (const m of MODULES) {
      const src = path.join(kernel.modulesDir, `${m}.ko`);
      if (fs.existsSync(src)) fs.copyFileSync(src, path.join(root, 'mods', `${m}.ko`));
    }
    const out = path.join(tmp, 'initrd.gz');
    // There is no cpio binary on these machines: busybox has one.
    const r = run('/bin/sh', ['-c', `cd "${root}" && find . | "${tools.busybox}" cpio -o -H newc 2>/dev/null | gzip -1 > "${out}"`]);
    if (r.code !== 0 || fs.statSync(out).size < 100000) throw new VmSetupError(`packing the initramfs failed:\n${r.out}`);
    fs.renameSync(out, file);
    // Older initramfs files for this kernel are of no further use.
    for (const f of fs.readdirSync(CACHE)) if (f.startsWith(`initrd-${kernel.version}-`) && path.join(CACHE, f) !== file) fs.rmSync(path.join(CACHE, f), { force: true });
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  return file;
}

export function prepareAssets(log: Log): VmAssets {
  const tools = ensureTools(log);
  const kernel = ensureKernel(log);
  const initrd = ensureInitramfs(tools, kernel, log);
  return { ...tools, kernel, initrd };
}

export interface BootOptions {
  mode: 'busybox' | 'systemd';
  /** Files written into the share before boot (job.sh, prepare.sh, units ...), relative names. */
  files: Record<string, string>;
  /** Kill qemu (by pid) after this long. */
  timeoutMs: number;
  memMb?: number;
  cpus?: number;
  /** Extra kernel command line. */
  append?: string;
  /** Each console line as it arrives. */
  onLine?: (line: string) => void;
}

export interface BootResult {
  /** qemu's exit status (137 when it was killed; see timedOut). */
  code: number | null;
  timedOut: boolean;
  console: string;
  /** Host wall time from spawning qemu to the initramfs' "ready" line (kernel + modules + mounts), ms. */
  bootMs: number | null;
  /** The guest's own uptime at that line (kernel boot without qemu's start and firmware), s. */
  guestBootS: number | null;
  /** Host wall time from spawning qemu to the first console line containing each "CGSTEP-VM: <what>", ms. */
  marks: Record<string, number>;
  /** Host wall time from spawning qemu to its exit, ms. */
  wallMs: number;
  /** Every regular file the guest left in the share (utf8), by relative path. */
  files: Record<string, string>;
}

/**
 * qemu processes this process started and has not seen exit, by pidfile: killed
 * by pid if this process exits first. qemu also runs under coreutils'
 * `timeout -s KILL`, a hard limit that holds even if this process is killed.
 */
const live = new Set<string>();
let hooked = false;
function pidOf(pidfile: string): number | null {
  try {
    const n = Number(fs.readFileSync(pidfile, 'utf8').trim());
    return Number.isInteger(n) && n > 1 ? n : null;
  } catch {
    return null;
  }
}
function killQemu(pidfile: string): void {
  const pid = pidOf(pidfile);
  if (pid) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
}
function hookExit(): void {
  if (hooked) return;
  hooked = true;
  process.on('exit', () => {
    for (const f of live) killQemu(f);
  });
}

function readTree(dir: string, base = dir, out: Record<string, string> = {}): Record<string, string> {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) readTree(p, base, out);
    else if (e.isFile()) out[path.relative(base, p)] = fs.readFileSync(p, 'utf8');
  }
  return out;
}

/** Console text without terminal escapes (systemd's colours and progress spinner). */
export function plain(line: string): string {
  // systemd truncates long status lines with an ellipsis, sometimes inside an escape.
  return line.replace(/\x1b(\[[0-9;?]*[A-Za-z]|[A-Za-z])/g, '').replace(/\x1b\[?[0-9;]*/g, '').trim();
}

export const READY_MARK = 'CGSTEP-VM: initramfs ready';

export function accel(): string {
  // /dev/kvm exists on some of these machines but the nested KVM hangs in the
  // BIOS (seen on a Firecracker host): software emulation unless asked.
  return process.env.CGSTEP_VM_ACCEL || 'tcg';
}

/**
 * Share directories (and pidfiles) of runs that were killed outright: the
 * qemu named in the pidfile is gone (its hard limit ends it), or there never
 * was one and the directory is two hours old. Live runs are left alone.
 */
function sweepStale(): void {
  const tmp = os.tmpdir();
  for (const e of fs.readdirSync(tmp)) {
    if (!/^cgstep-vm-[A-Za-z0-9]{6}$/.test(e)) continue;
    const dir = path.join(tmp, e);
    const pidfile = `${dir}.qemu.pid`;
    let stale: boolean;
    const pid = pidOf(pidfile);
    if (pid) {
      try {
        process.kill(pid, 0);
        stale = !/qemu/.test(fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8'));
      } catch {
        stale = true;
      }
    } else {
      try {
        stale = Date.now() - fs.statSync(dir).mtimeMs > 2 * 3600 * 1000;
      } catch {
        stale = false;
      }
    }
    if (stale) {
      fs.rmSync(dir, { recursive: true, force: true });
      fs.rmSync(pidfile, { force: true });
    }
  }
}

export async function bootVm(assets: VmAssets, o: BootOptions): Promise<BootResult> {
  hookExit();
  sweepStale();
  const share = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-vm-'));
  try {
    for (const [name, text] of Object.entries(o.files)) {
      fs.mkdirSync(path.dirname(path.join(share, name)), { recursive: true });
      fs.writeFileSync(path.join(share, name), text, { mode: /\.sh$|^bin\//.test(name) ? 0o755 : 0o644 });
    }
    const args = [
      '-accel', accel(),
      '-m', String(o.memMb ?? 1536),
      '-smp', String(o.cpus ?? 2),
      '-nodefaults', '-no-user-config', '-display', 'none', '-serial', 'stdio', '-no-reboot',
      '-kernel', assets.kernel.vmlinuz,
      '-initrd', assets.initrd,
      '-append', `console=ttyS0 panic=-1 quiet loglevel=3 cgstep.mode=${o.mode} ${o.append ?? ''}`.trim(),
      '-virtfs', 'local,path=/,mount_tag=hostroot,security_model=passthrough,readonly=on,multidevs=remap',
      '-virtfs', `local,path=${share},mount_tag=vmout,security_model=passthrough,multidevs=remap`,
    ];
    const t0 = performance.now();
    const pidfile = `${share}.qemu.pid`;
    args.push('-pidfile', pidfile);
    const hardLimitS = Math.ceil(o.timeoutMs / 1000) + 30;
    const proc = spawn('timeout', ['-s', 'KILL', String(hardLimitS), assets.qemu, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    live.add(pidfile);
    let consoleText = '';
    let bootMs: number | null = null;
    let guestBootS: number | null = null;
    const marks: Record<string, number> = {};
    let partial = '';
    const onData = (s: string) => {
      consoleText += s;
      partial += s;
      const lines = partial.split(/\r?\n/);
      partial = lines.pop() ?? '';
      for (const l of lines) {
        if (bootMs === null && l.includes(READY_MARK)) {
          bootMs = performance.now() - t0;
          const up = /uptime ([\d.]+) s/.exec(l);
          if (up) guestBootS = Number(up[1]);
        }
        const mark = /CGSTEP-VM: ([a-z][a-z ]*[a-z])/.exec(l);
        if (mark && !(mark[1] in marks)) marks[mark[1]] = performance.now() - t0;
        o.onLine?.(l);
      }
    };
    // Decoded per stream, so a character split across two reads stays whole.
    proc.stdout!.setEncoding('utf8').on('data', onData);
    proc.stderr!.setEncoding('utf8').on('data', onData);
    let timedOut = false;
    const code = await new Promise<number | null>((resolve) => {
      const timer = setTimeout(() => {
        timedOut = true;
        killQemu(pidfile);
        // Not started far enough to write its pidfile: timeout(1) passes TERM on to it.
        if (proc.pid) try { process.kill(proc.pid, 'SIGTERM'); } catch { /* gone */ }
      }, o.timeoutMs);
      proc.once('error', (err) => {
        consoleText += `\nspawn ${assets.qemu}: ${err.message}\n`;
      });
      proc.once('close', (c) => {
        clearTimeout(timer);
        resolve(c);
      });
    });
    live.delete(pidfile);
    fs.rmSync(pidfile, { force: true });
    return { code, timedOut, console: consoleText, bootMs, guestBootS, marks, wallMs: performance.now() - t0, files: readTree(share) };
  } finally {
    fs.rmSync(share, { recursive: true, force: true });
  }
}

export interface TapResult { ok: boolean; skip: boolean; todo: boolean; n: number; name: string; logs: string[]; diag: string }

/**
 * ava --tap: "ok 3 - title" (with several files "file › title"), "not ok 4 - ...",
 * then the test's t.log lines as "#   ..." comments, then for a failure a YAML
 * block between "  ---" and "  ...". Directives "# SKIP" and "# TODO".
 */
export function parseTap(text: string): { tests: TapResult[]; plan: number | null } {
  const tests: TapResult[] = [];
  let plan: number | null = null;
  const lines = text.split('\n');
  let cur: TapResult | null = null;
  for (let i = 0; i < lines.length; i++) {
    const l = lines[i];
    const pm = /^1\.\.(\d+)/.exec(l);
    if (pm) plan = Number(pm[1]);
    const m = /^(not )?ok (\d+) - (.*?)(?: # (SKIP|TODO)\b.*)?$/.exec(l);
    if (m) {
      cur = { ok: !m[1], n: Number(m[2]), name: m[3], skip: m[4] === 'SKIP', todo: m[4] === 'TODO', logs: [], diag: '' };
      tests.push(cur);
      continue;
    }
    if (!cur) continue;
    if (/^#   /.test(l)) cur.logs.push(l.slice(4));
    else if (l.trim() === '---') {
      const diag: string[] = [];
      while (i + 1 < lines.length && lines[i + 1].trim() !== '...') diag.push(lines[++i]);
      i++;
      cur.diag = diag.join('\n');
    } else if (/^(# |\s*$)/.test(l)) cur = l.trim() === '' ? cur : null;
  }
  return { tests, plan };
}
