/**
 * test/harness/slurm: a real Slurm (Debian's 22.05 slurmctld + slurmd with
 * munge) on this one machine, loopback only, in a temp dir, with the cgstep
 * SPANK plugin in its plugstack.conf.
 *
 *   const support = slurmSupport();          // installs the packages if missing
 *   const c = await startSlurm({ name: 'x', socket: agentSocket });
 *   const r = await c.srun(['-n2', 'cat', '/proc/self/cgroup']);
 *   await c.stop();
 *
 * Everything it starts (munged as the munge user on its own socket, slurmctld,
 * slurmd, and whatever they left: slurmstepd and job processes, found by the
 * SLURM_CONF of this cluster in their environment) is stopped by pid, and its
 * temp dir removed. It never looks processes up by name: other engineers run
 * theirs on these machines. Fake GPUs: <dir>/gpu/nvidia0..3 (c 195 0..3) as
 * gres.conf File= lines (gres gpu, node Gres=gpu:4).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { INSTALL_LOCK, aptInstall, missingPackages } from '../helpers/apt.js';
import { which } from '../helpers/which.js';

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(here, '../..');
export const PLUGIN_SRC_DIR = path.join(REPO, 'native/spank');

const PACKAGES = ['munge', 'slurmctld', 'slurmd', 'slurm-client', 'libslurm-dev'];
const SPANK_H = '/usr/include/slurm/spank.h';
const MUNGE_KEY = '/etc/munge/munge.key';
const NODE = 'node1';
export const GPU_COUNT = 4;
export const GPU_MAJOR = 195;

export type Support = { ok: true } | { ok: false; reason: string };

const have = (bin: string): boolean => which(bin) !== undefined;

let supportCache: Support | null = null;

/**
 * Whether a Slurm cluster can run here; installs the Debian packages first if
 * any is missing (test/helpers/apt: under a file lock, daemons kept from
 * starting). Synchronous on purpose: test files decide at load time between
 * test.serial and test.serial.skip.
 */
export function slurmSupport(): Support {
  if (supportCache) return supportCache;
  supportCache = computeSupport();
  return supportCache;
}

function computeSupport(): Support {
  if (process.getuid?.() !== 0) return { ok: false, reason: 'not root (slurmd, munged and cgroup writes need root)' };
  if (!have('gcc') && !have('cc')) return { ok: false, reason: 'no C compiler to build the SPANK plugin' };
  if (!have('make')) return { ok: false, reason: 'no make to build the SPANK plugin' };
  for (const b of ['flock', 'setpriv']) if (!have(b)) return { ok: false, reason: `${b} (util-linux) is missing` };
  if (missingPackages(PACKAGES).length > 0 || !fs.existsSync(SPANK_H)) {
    if (!have('apt-get')) return { ok: false, reason: `packages missing (${missingPackages(PACKAGES).join(' ')}) and no apt-get to install them` };
    const t0 = Date.now();
    const failed = aptInstall(PACKAGES);
    if (failed) return { ok: false, reason: failed };
    const left = missingPackages(PACKAGES);
    if (left.length || !fs.existsSync(SPANK_H)) return { ok: false, reason: `after apt-get install, still missing: ${left.join(' ') || SPANK_H}` };
    console.error(`[slurm harness] installed ${PACKAGES.join(' ')} in ${Date.now() - t0} ms`);
  }
  for (const b of ['slurmctld', 'slurmd', 'srun', 'sbatch', 'scontrol', 'munged']) {
    if (!have(b) && !fs.existsSync(`/usr/sbin/${b}`)) return { ok: false, reason: `${b} not found after installing the packages` };
  }
  const mungeUser = spawnSync('id', ['-u', 'munge'], { encoding: 'utf8' });
  if (mungeUser.status !== 0) return { ok: false, reason: 'no munge user (the munge package creates it)' };
  return { ok: true };
}

/** The munge key, created (owned by munge, 0400) if missing. */
export function ensureMungeKey(): void {
  if (fs.existsSync(MUNGE_KEY)) return;
  const r = spawnSync('sh', ['-c', `flock ${INSTALL_LOCK} sh -c '[ -e ${MUNGE_KEY} ] || { mkdir -p /etc/munge && mungekey --create --keyfile=${MUNGE_KEY} && chown munge:munge ${MUNGE_KEY} && chmod 0400 ${MUNGE_KEY}; }'`], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`cannot create ${MUNGE_KEY}: ${r.stderr}`);
}

const makePlugin = (outDir: string, src = PLUGIN_SRC_DIR) => ['-s', '-C', src, `OUT=${outDir}`];

/** Build the plugin into dir (make -C native/spank OUT=dir, or from another source dir); returns the .so path. */
export function buildPlugin(outDir: string, src = PLUGIN_SRC_DIR): string {
  const r = spawnSync('make', makePlugin(outDir, src), { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`building the SPANK plugin failed:\n${r.stdout}${r.stderr}`);
  return path.join(outDir, 'cgstep_spank.so');
}

/** buildPlugin without blocking the event loop (the build overlaps other start-up work). */
export async function buildPluginAsync(outDir: string): Promise<string> {
  const r = await run('make', makePlugin(outDir), { timeoutMs: 120_000 });
  if (r.code !== 0) throw new Error(`building the SPANK plugin failed:\n${r.stdout}${r.stderr}`);
  return path.join(outDir, 'cgstep_spank.so');
}

/** A TCP port free on host now (and count-1 more after it when count > 1). */
export async function freePorts(count = 1, host = '127.0.0.1'): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = count === 1 ? 0 : 20000 + Math.floor(Math.random() * 40000);
    const servers: net.Server[] = [];
    let first = 0;
    try {
      for (let i = 0; i < count; i++) {
        const s = net.createServer();
        await new Promise<void>((resolve, reject) => {
          s.once('error', reject);
          s.listen(base === 0 ? 0 : base + i, host, () => resolve());
        });
        servers.push(s);
        if (i === 0) first = (s.address() as net.AddressInfo).port;
      }
      return first;
    } catch {
      /* taken: try another range */
    } finally {
      await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
    }
  }
  throw new Error(`no free ports on ${host}`);
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Run a command to completion (async: the test's event loop keeps going). */
export function run(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number; input?: string; cwd?: string } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const p = spawn(cmd, args, { env: opts.env ?? process.env, cwd: opts.cwd, stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout!.on('data', (d) => (stdout += d));
    p.stderr!.on('data', (d) => (stderr += d));
    p.on('error', reject);
    const timer = setTimeout(() => p.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
    p.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, ms: performance.now() - t0 });
    });
    if (p.stdin) {
      p.stdin.on('error', () => undefined); // EPIPE when it exits without reading
      p.stdin.end(opts.input);
    }
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export interface SlurmCluster {
  /** The temp dir holding config, state, logs and the fake GPUs. */
  dir: string;
  conf: string;
  gresConf: string;
  plugstack: string;
  /** The built plugin (built even when plugstack.conf starts without it). */
  plugin: string;
  /** Fake GPU device nodes, index order (gres gpu File= order). */
  gpus: string[];
  /** Environment for Slurm clients (SLURM_CONF set). */
  env: NodeJS.ProcessEnv;
  startupMs: number;
  srun(args: string[], opts?: { timeoutMs?: number; input?: string }): Promise<RunResult>;
  /** sbatch --parsable; returns the job id. Output goes to files under dir. */
  sbatch(script: string, args?: string[]): Promise<{ job: number; out: string; err: string }>;
  scancel(job: number, args?: string[]): Promise<RunResult>;
  scontrol(args: string[]): Promise<RunResult>;
  /** The job's state from squeue ("" when it has left the queue). */
  jobState(job: number): Promise<string>;
  /** Wait until the job left the queue (completed, failed or cancelled). */
  waitJobDone(job: number, timeoutMs?: number): Promise<void>;
  /** Cancel whatever is queued or running and wait until the queue is empty. */
  waitIdle(timeoutMs?: number): Promise<void>;
  log(which: 'slurmctld' | 'slurmd' | 'munged'): string;
  /**
   * Rewrite plugstack.conf: the plugin with these options, or (null) no plugin.
   * slurmstepd reads it for every step it starts, so the next step sees it.
   */
  setPluginArgs(args: string[] | null): void;
  stop(): Promise<void>;
}

export interface Daemon {
  name: string;
  proc: ChildProcess;
  exited: Promise<void>;
}

const liveDaemons = new Set<Daemon>();
process.on('exit', () => {
  // Last resort (a crashed test): SIGKILL what is still ours, by pid.
  for (const d of liveDaemons) {
    try {
      process.kill(d.proc.pid!, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
});

export function startDaemon(name: string, cmd: string, args: string[], env: NodeJS.ProcessEnv, logFile: string): Daemon {
  const fd = fs.openSync(logFile, 'a');
  const proc = spawn(cmd, args, { env, stdio: ['ignore', fd, fd] });
  fs.closeSync(fd);
  const exited = new Promise<void>((resolve) => {
    if (proc.exitCode !== null || proc.signalCode !== null) resolve();
    proc.once('exit', () => resolve());
    proc.once('error', () => resolve());
  });
  const d: Daemon = { name, proc, exited };
  liveDaemons.add(d);
  void exited.then(() => liveDaemons.delete(d));
  return d;
}

export async function stopDaemon(d: Daemon, graceMs = 5000): Promise<void> {
  if (d.proc.exitCode !== null || d.proc.signalCode !== null) return;
  try {
    process.kill(d.proc.pid!, 'SIGTERM');
  } catch {
    return;
  }
  const timedOut = await Promise.race([d.exited.then(() => false), sleep(graceMs).then(() => true)]);
  if (timedOut) {
    try {
      process.kill(d.proc.pid!, 'SIGKILL');
    } catch {
      /* gone */
    }
    await d.exited;
  }
}

/** Pids whose environment carries SLURM_CONF=<conf>: this cluster's daemons, steps and jobs. */
export function pidsOfCluster(conf: string): number[] {
  const needle = Buffer.from(`SLURM_CONF=${conf}\0`);
  const pids: number[] = [];
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    const pid = Number(e);
    if (pid === process.pid) continue;
    try {
      const env = fs.readFileSync(`/proc/${pid}/environ`);
      if (env.includes(needle)) pids.push(pid);
    } catch {
      /* gone or a kernel thread */
    }
  }
  return pids;
}

export function killPids(pids: number[]): void {
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
}

/**
 * End a cluster: cancel its jobs (slurmd then tears their steps down
 * normally), stop its slurmd(s), slurmctld and munged by pid, then SIGKILL
 * whatever is left of it (slurmstepd, job processes: found by its SLURM_CONF).
 */
export async function endCluster(conf: string, daemons: Daemon[]): Promise<void> {
  const env = { ...process.env, SLURM_CONF: conf };
  const ctld = daemons.find((d) => d.name === 'slurmctld');
  if (ctld && ctld.proc.exitCode === null) {
    const q = await run('squeue', ['-h', '-o', '%i'], { env, timeoutMs: 10_000 }).catch(() => null);
    const jobs = (q?.stdout ?? '').split('\n').map((s) => s.trim()).filter(Boolean);
    if (jobs.length) {
      await run('scancel', jobs, { env, timeoutMs: 10_000 }).catch(() => null);
      const deadline = Date.now() + 15_000;
      while (Date.now() < deadline) {
        const r = await run('squeue', ['-h', '-o', '%i'], { env, timeoutMs: 10_000 }).catch(() => null);
        if (!r || r.stdout.trim() === '') break;
        await sleep(200);
      }
    }
  }
  for (const name of ['slurmd', 'slurmctld', 'munged']) {
    for (const d of daemons.filter((x) => x.name === name)) await stopDaemon(d);
  }
  for (let i = 0; i < 3; i++) {
    const left = pidsOfCluster(conf);
    if (!left.length) break;
    killPids(left);
    await sleep(100);
  }
}

/** Environment for a cluster's daemons and clients: its SLURM_CONF, and no job environment from the caller. */
export function clusterEnv(conf: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, SLURM_CONF: conf };
  for (const k of Object.keys(env)) if (k.startsWith('SLURM_') && k !== 'SLURM_CONF') delete env[k];
  return env;
}

/** slurmctld -D on conf, its output in dir/log/slurmctld.out; up resolves once `scontrol ping` says it is UP. */
export function startSlurmctld(dir: string, conf: string, env: NodeJS.ProcessEnv): { daemon: Daemon; up: Promise<void>; log: () => string } {
  const daemon = startDaemon('slurmctld', 'slurmctld', ['-D', '-i', '-f', conf], env, path.join(dir, 'log/slurmctld.out'));
  const log = () => readLog(path.join(dir, 'log/slurmctld.out')) + readLog(path.join(dir, 'log/slurmctld.log'));
  const up = waitUntil(async () => /is UP/.test((await run('scontrol', ['ping'], { env, timeoutMs: 10_000 })).stdout), 30_000, () => `slurmctld did not come up:\n${log()}`, daemon);
  return { daemon, up, log };
}

export interface SlurmOptions {
  /** Names the temp dir (cgstep-slurm-<name>-XXXX). */
  name: string;
  /** cgstepd's socket, for the plugin's socket= option. */
  socket: string;
  /** false: no plugin in plugstack.conf (for a baseline). Default true. */
  plugin?: boolean;
  /** Extra plugstack.conf options for the plugin (failure=open, timeout_ms=...). */
  pluginArgs?: string[];
  /** Node CPUs (default 4; more than the machine's is allowed via config_overrides). */
  cpus?: number;
  /** Extra slurm.conf lines (PrologFlags=contain, LaunchParameters=...). */
  extraConf?: string[];
  /** Build the plugin from this source dir instead of native/spank (a benchmark's baseline). */
  pluginSrc?: string;
}

/** munged as the munge user on its own socket under dir/munge, key /etc/munge/munge.key; resolves once the socket exists. */
export async function startMunged(dir: string): Promise<{ daemon: Daemon; socket: string; dir: string }> {
  const mungeDir = path.join(dir, 'munge');
  fs.mkdirSync(mungeDir, { mode: 0o755 }); // munged wants others to reach its socket
  const mungeUid = Number(spawnSync('id', ['-u', 'munge'], { encoding: 'utf8' }).stdout.trim());
  const mungeGid = Number(spawnSync('id', ['-g', 'munge'], { encoding: 'utf8' }).stdout.trim());
  fs.chownSync(mungeDir, mungeUid, mungeGid);
  fs.chmodSync(mungeDir, 0o755);
  const socket = path.join(mungeDir, 'munge.socket');
  const daemon = startDaemon(
    'munged',
    'setpriv',
    [
      `--reuid=${mungeUid}`,
      `--regid=${mungeGid}`,
      '--clear-groups',
      '/usr/sbin/munged',
      '--foreground',
      `--socket=${socket}`,
      `--key-file=${MUNGE_KEY}`,
      `--pid-file=${path.join(mungeDir, 'munged.pid')}`,
      `--log-file=${path.join(mungeDir, 'munged.log')}`,
      `--seed-file=${path.join(mungeDir, 'munged.seed')}`,
      '--num-threads=2',
    ],
    process.env,
    path.join(dir, 'munged.out'),
  );
  try {
    await waitUntil(() => fs.existsSync(socket), 10_000, () => `munged did not create ${socket}:\n${readLog(path.join(dir, 'munged.out'))}${readLog(path.join(mungeDir, 'munged.log'))}`, daemon);
  } catch (err) {
    await stopDaemon(daemon);
    throw err;
  }
  return { daemon, socket, dir: mungeDir };
}

/**
 * slurm.conf lines every test cluster shares (loopback only, root daemons,
 * proctrack/pgid and task/none, state and logs under dir); the caller adds
 * its nodes and partition.
 */
export function clusterConfLines(c: {
  dir: string;
  ctldPort: number;
  slurmdPort: number;
  srunBase: number;
  mungeSocket: string;
  plugstack: string;
  slurmd: { spool: string; pidFile: string; logFile: string };
}): string[] {
  return [
    'ClusterName=cgstep',
    `SlurmctldHost=localhost(127.0.0.1)`,
    `SlurmctldPort=${c.ctldPort}`,
    `SlurmdPort=${c.slurmdPort}`,
    `SrunPortRange=${c.srunBase}-${c.srunBase + 39}`,
    'CommunicationParameters=NoCtldInAddrAny,NoInAddrAny',
    'SlurmUser=root',
    'SlurmdUser=root',
    'AuthType=auth/munge',
    'CredType=cred/munge',
    `AuthInfo=socket=${c.mungeSocket}`,
    `StateSaveLocation=${path.join(c.dir, 'state')}`,
    `SlurmdSpoolDir=${c.slurmd.spool}`,
    `SlurmctldPidFile=${path.join(c.dir, 'run/slurmctld.pid')}`,
    `SlurmdPidFile=${c.slurmd.pidFile}`,
    `SlurmctldLogFile=${path.join(c.dir, 'log/slurmctld.log')}`,
    `SlurmdLogFile=${c.slurmd.logFile}`,
    'SlurmctldDebug=info',
    'SlurmdDebug=verbose',
    'ProctrackType=proctrack/pgid',
    'TaskPlugin=task/none',
    'JobAcctGatherType=jobacct_gather/none',
    'AccountingStorageType=accounting_storage/none',
    'JobCompType=jobcomp/none',
    'SelectType=select/cons_tres',
    'SelectTypeParameters=CR_Core_Memory',
    'DefMemPerCPU=100',
    'GresTypes=gpu',
    'MpiDefault=none',
    'MailProg=/bin/true',
    `PlugStackConfig=${c.plugstack}`,
    'SlurmdParameters=config_overrides',
    'ReturnToService=2',
    'KillWait=5',
    'MinJobAge=10',
    'InactiveLimit=0',
    'SchedulerType=sched/builtin',
    'SchedulerParameters=batch_sched_delay=0,sched_interval=1',
  ];
}

export async function startSlurm(o: SlurmOptions): Promise<SlurmCluster> {
  const support = slurmSupport();
  if (!support.ok) throw new Error(`Slurm unavailable: ${support.reason}`);
  ensureMungeKey();
  const t0 = performance.now();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `cgstep-slurm-${o.name}-`));
  // munged (as munge) must reach its own subdir.
  fs.chmodSync(dir, 0o755);
  const daemons: Daemon[] = [];
  let stopped = false;
  const conf = path.join(dir, 'slurm.conf');

  const stop = async () => {
    if (stopped) return;
    stopped = true;
    await endCluster(conf, daemons);
    fs.rmSync(dir, { recursive: true, force: true });
  };

  try {
    const { daemon: munged, socket: mungeSocket, dir: mungeDir } = await startMunged(dir);
    daemons.push(munged);

    // Fake GPUs: char 195:N, open() gives ENXIO (no driver) unless the cgroup denies it.
    const gpuDir = path.join(dir, 'gpu');
    fs.mkdirSync(gpuDir);
    const gpus: string[] = [];
    for (let i = 0; i < GPU_COUNT; i++) {
      const p = path.join(gpuDir, `nvidia${i}`);
      const r = spawnSync('mknod', ['-m', '0666', p, 'c', String(GPU_MAJOR), String(i)], { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`mknod ${p}: ${r.stderr}`);
      gpus.push(p);
    }
    const gresConf = path.join(dir, 'gres.conf');
    fs.writeFileSync(gresConf, gpus.map((g) => `NodeName=${NODE} Name=gpu File=${g}\n`).join(''));

    const plugstack = path.join(dir, 'plugstack.conf');
    const plugin = buildPlugin(path.join(dir, 'plugin'), o.pluginSrc);
    const setPluginArgs = (args: string[] | null) => {
      const text = args === null ? '# no plugins (baseline)\n' : `required ${plugin} ${[`socket=${o.socket}`, ...args].join(' ')}\n`;
      fs.writeFileSync(`${plugstack}.tmp`, text);
      fs.renameSync(`${plugstack}.tmp`, plugstack);
    };
    setPluginArgs(o.plugin === false ? null : (o.pluginArgs ?? []));

    const ctldPort = await freePorts(1);
    let slurmdPort = await freePorts(1);
    while (slurmdPort === ctldPort) slurmdPort = await freePorts(1);
    const srunBase = await freePorts(40);
    for (const d of ['state', 'spool', 'log', 'run', 'out']) fs.mkdirSync(path.join(dir, d));
    const cpus = o.cpus ?? 4;
    fs.writeFileSync(
      conf,
      [
        `# cgstep test cluster (${o.name}), written by test/harness/slurm.ts`,
        ...clusterConfLines({
          dir,
          ctldPort,
          slurmdPort,
          srunBase,
          mungeSocket,
          plugstack,
          slurmd: { spool: path.join(dir, 'spool'), pidFile: path.join(dir, 'run/slurmd.pid'), logFile: path.join(dir, 'log/slurmd.log') },
        }),
        `NodeName=${NODE} NodeHostname=localhost NodeAddr=127.0.0.1 CPUs=${cpus} Sockets=1 CoresPerSocket=${cpus} ThreadsPerCore=1 RealMemory=2000 Gres=gpu:${GPU_COUNT} State=UNKNOWN`,
        `PartitionName=debug Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO`,
        ...(o.extraConf ?? []),
        '',
      ].join('\n'),
    );

    const env = clusterEnv(conf);
    const ctld = startSlurmctld(dir, conf, env);
    daemons.push(ctld.daemon);
    await ctld.up;
    const slurmd = startDaemon('slurmd', 'slurmd', ['-D', '-N', NODE, '-f', conf], env, path.join(dir, 'log/slurmd.out'));
    daemons.push(slurmd);
    await waitUntil(
      async () => /^idle/m.test((await run('sinfo', ['-h', '-n', NODE, '-o', '%T'], { env, timeoutMs: 10_000 })).stdout),
      30_000,
      () => `slurmd did not become idle:\n${readLog(path.join(dir, 'log/slurmd.out'))}${readLog(path.join(dir, 'log/slurmd.log'))}`,
      slurmd,
    );

    const cluster: SlurmCluster = {
      dir,
      conf,
      gresConf,
      plugstack,
      plugin,
      gpus,
      env,
      startupMs: Math.round(performance.now() - t0),
      srun: (args, ro = {}) => run('srun', args, { env, timeoutMs: ro.timeoutMs ?? 60_000, input: ro.input, cwd: dir }),
      sbatch: async (script, args = []) => {
        const n = fs.readdirSync(path.join(dir, 'out')).length;
        const out = path.join(dir, 'out', `job${n}.out`);
        const err = path.join(dir, 'out', `job${n}.err`);
        const file = path.join(dir, 'out', `job${n}.sh`);
        fs.writeFileSync(file, script.startsWith('#!') ? script : `#!/bin/sh\n${script}`, { mode: 0o755 });
        const r = await run('sbatch', ['--parsable', '-o', out, '-e', err, ...args, file], { env, timeoutMs: 30_000, cwd: dir });
        const job = Number(r.stdout.trim().split(';')[0]);
        if (r.code !== 0 || !Number.isInteger(job) || job <= 0) throw new Error(`sbatch failed (${r.code}): ${r.stdout}${r.stderr}`);
        return { job, out, err };
      },
      scancel: (job, args = []) => run('scancel', [...args, String(job)], { env, timeoutMs: 30_000 }),
      scontrol: (args) => run('scontrol', args, { env, timeoutMs: 30_000 }),
      jobState: async (job) => (await run('squeue', ['-h', '-j', String(job), '-o', '%T'], { env, timeoutMs: 30_000 })).stdout.trim(),
      waitJobDone: async (job, timeoutMs = 60_000) => {
        const deadline = Date.now() + timeoutMs;
        for (;;) {
          const r = await run('squeue', ['-h', '-j', String(job), '-o', '%T'], { env, timeoutMs: 30_000 });
          const st = r.stdout.trim();
          if (st === '' || /^(COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE|PREEMPTED)$/.test(st)) return;
          if (Date.now() > deadline) throw new Error(`job ${job} still ${st} after ${timeoutMs} ms`);
          await sleep(100);
        }
      },
      waitIdle: async (timeoutMs = 60_000) => {
        const deadline = Date.now() + timeoutMs;
        const q = async () => (await run('squeue', ['-h', '-o', '%i'], { env, timeoutMs: 30_000 })).stdout.split('\n').map((x) => x.trim()).filter(Boolean);
        const jobs = await q();
        if (jobs.length) await run('scancel', jobs, { env, timeoutMs: 30_000 });
        for (let left = jobs; left.length; left = await q()) {
          if (Date.now() > deadline) throw new Error(`jobs ${left.join(' ')} still in the queue after ${timeoutMs} ms`);
          await sleep(100);
        }
      },
      log: (which) =>
        which === 'munged' ? readLog(path.join(mungeDir, 'munged.log')) : readLog(path.join(dir, `log/${which}.log`)) + readLog(path.join(dir, `log/${which}.out`)),
      setPluginArgs,
      stop,
    };
    return cluster;
  } catch (err) {
    await stop();
    throw err;
  }
}

export function readLog(p: string): string {
  try {
    const s = fs.readFileSync(p, 'utf8');
    return s.length > 6000 ? `...${s.slice(-6000)}` : s;
  } catch {
    return '';
  }
}

export async function waitUntil(check: () => boolean | Promise<boolean>, ms: number, what: () => string, daemon?: Daemon): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await check()) return;
    if (daemon && (daemon.proc.exitCode !== null || daemon.proc.signalCode !== null)) {
      throw new Error(`${daemon.name} exited (${daemon.proc.exitCode ?? daemon.proc.signalCode}): ${what()}`);
    }
    if (Date.now() > deadline) throw new Error(`timed out: ${what()}`);
    await sleep(100);
  }
}
