/**
 * bench/slurm-vm.guest: the guest side of `npm run bench:slurm` (bench/slurm-vm.ts
 * boots the VM lane's busybox guest and runs this inside it, as root, on a pure
 * cgroup v2 hierarchy with every controller).
 *
 * One Slurm 22.05 node (the host's Debian packages, seen through the guest's
 * overlay), run in blocks of two modes over the same workload:
 *   native  proctrack/cgroup + task/cgroup, cgroup.conf CgroupPlugin=cgroup/v2,
 *           IgnoreSystemd=yes: Slurm's own plugin places and limits every task;
 *   cgstep  proctrack/pgid + task/none + the cgstep SPANK plugin, with cgstepd
 *           reading the same cgroup.conf and gres.conf.
 * slurmctld and slurmd (and cgstepd) are restarted with fresh state between
 * blocks, after one untimed warm-up of each mode. The first block of each mode
 * proves the enforcement (memory.max and cpuset against the formulas, a
 * memory-cgroup OOM kill, GPU device access);
 * every block times `srun -n1 true`, `srun -n N -O true` and a burst of
 * `sbatch --wrap=true` jobs. Results go to $OUT/slurm-vm.json after every block
 * (a run cut short still leaves what it measured); progress lines go to the
 * console. Every process it starts is stopped by pid.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { clusterConfLines, clusterEnv, endCluster, ensureMungeKey, readLog, run, startDaemon, startMunged, stopDaemon, waitUntil, type Daemon, type RunResult } from '../test/harness/slurm.js';
import { MOUNT, removeRoot, startAgent, type BenchAgent } from './lib.js';

type Mode = 'native' | 'cgstep';

export interface GuestConfig {
  order: Mode[];
  /** srun -n1 runs per mode (split over that mode's blocks). */
  n1: number;
  /** srun -n tasks runs per mode. */
  many: number;
  tasks: number;
  /** sbatch jobs per mode. */
  sbatch: number;
  plugin: string;
  cpus: number;
  realMemoryMb: number;
  /** false: skip the enforcement checks (quick timing experiments; enforced.* then read false). */
  checks: boolean;
  /** cgstepd's log into the share as cgstepd-block<N>.log (slows the agent: for debugging, not figures). */
  agentLog?: boolean;
  /** cgstepd under --cpu-prof, its profiles into the share (debugging, not figures). */
  agentProfile?: boolean;
}

export interface CheckResult { ok: boolean; detail: string[] }

export interface BlockResult {
  mode: Mode;
  index: number;
  startMs: number;
  n1: number[];
  many: number[];
  sbatch: { jobs: number; seconds: number } | null;
  /** cgstep blocks: the agent's request latency histogram (sum s, count) by op. */
  agentOps?: Record<string, { count: number; sumS: number }>;
  error?: string;
}

type Checks = Record<'memory' | 'cpuset' | 'devices' | 'oom', CheckResult>;

export interface GuestResult {
  config: GuestConfig;
  kernel: string;
  slurm: string;
  nproc: number;
  memTotalKiB: number;
  controllers: string;
  blocks: BlockResult[];
  checks: Partial<Record<Mode, Checks>>;
  /** Earlier rounds of a mode's checks that did not all pass (the mode's next block runs them again). */
  failedChecks: Partial<Record<Mode, Checks[]>>;
  /** What exists above the scope before and after the daemon of each mode starts. */
  above: Partial<Record<Mode, { before: string; after: string }>>;
  wallS: number;
  done: boolean;
  error?: string;
}

const OUT = process.env.CGSTEP_VM_OUT ?? '/cgstep-vm';
const W = '/tmp/slurm-bench';
const NODE = 'node1';
const GPUS = ['/dev/nvidia0', '/dev/nvidia1'];
const MiB = 1024 * 1024;
/** cgroup.conf for both modes: the limits are what both must enforce alike. */
const ALLOWED_RAM = 90;
const MIN_RAM_MB = 30;
const CGROUP_CONF = [
  'CgroupPlugin=cgroup/v2',
  'IgnoreSystemd=yes',
  'ConstrainCores=yes',
  'ConstrainRAMSpace=yes',
  `AllowedRAMSpace=${ALLOWED_RAM}`,
  `MinRAMSpace=${MIN_RAM_MB}`,
  'ConstrainDevices=yes',
  '',
].join('\n');
const GRES_CONF = `NodeName=${NODE} Name=gpu File=/dev/nvidia[0-${GPUS.length - 1}]\n`;
const METRICS_PORT = 9477;

const cfg = JSON.parse(fs.readFileSync(path.join(OUT, 'config.json'), 'utf8')) as GuestConfig;
const t0 = performance.now();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function say(msg: string): void {
  process.stdout.write(`vmbench: [${((performance.now() - t0) / 1000).toFixed(0)} s] ${msg}\n`);
}

function sh(cmd: string): string {
  const r = spawnSync('sh', ['-c', cmd], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd}: exit ${r.status}: ${r.stderr}`);
  return r.stdout;
}

/** Up to ms for what: slow under emulation, and each check (an scontrol or sinfo) costs the guest CPU. */
function waitFor(what: string, check: () => Promise<boolean> | boolean, ms: number, d?: Daemon, log?: string): Promise<void> {
  return waitUntil(check, ms, () => `${what}${log ? `:\n${readLog(log)}` : ''}`, d);
}

/** Loopback that glibc accepts for IPv4 (it ignores 127.0.0.1 alone), fake GPUs, munged. */
async function nodeSetup(): Promise<{ daemon: Daemon; socket: string }> {
  fs.mkdirSync(W, { recursive: true, mode: 0o755 });
  sh('ip link set lo up; ip addr add 127.0.0.2/8 dev lo 2>/dev/null || true');
  GPUS.forEach((g, i) => {
    if (!fs.existsSync(g)) sh(`mknod -m 0666 ${g} c 195 ${i}`);
  });
  fs.writeFileSync(path.join(W, 'cgroup.conf'), CGROUP_CONF);
  fs.writeFileSync(path.join(W, 'gres.conf'), GRES_CONF);
  ensureMungeKey();
  return startMunged(W);
}

/**
 * The test harness's cluster lines with this mode's two plugins, without
 * NoInAddrAny/NoCtldInAddrAny: the guest has nothing but lo, so the daemons may
 * bind the wildcard (with those, slurmd and slurmctld resolve their own
 * addresses, which the guest's borrowed /etc/hosts does not promise).
 */
function slurmConf(mode: Mode, dir: string, mungeSocket: string): string {
  const plugins = mode === 'native' ? { 'ProctrackType=': 'ProctrackType=proctrack/cgroup', 'TaskPlugin=': 'TaskPlugin=task/cgroup' } : {};
  const lines = clusterConfLines({
    dir,
    ctldPort: 6817,
    slurmdPort: 6818,
    srunBase: 60001,
    mungeSocket,
    plugstack: path.join(dir, 'plugstack.conf'),
    slurmd: { spool: path.join(dir, 'spool'), pidFile: path.join(dir, 'run/slurmd.pid'), logFile: path.join(dir, 'log/slurmd.log') },
  })
    .filter((l) => !l.startsWith('CommunicationParameters='))
    // An emulated guest on a shared host: the 10 s default let a launch time out (srun then died of it), in either mode.
    .concat(['MessageTimeout=60'])
    .map((l) => Object.entries(plugins).find(([k]) => l.startsWith(k))?.[1] ?? l);
  return [
    `# vmbench ${mode} block, written by bench/slurm-vm.guest.ts`,
    ...lines,
    `NodeName=${NODE} NodeHostname=localhost NodeAddr=127.0.0.1 CPUs=${cfg.cpus} Sockets=1 CoresPerSocket=${cfg.cpus} ThreadsPerCore=1 RealMemory=${cfg.realMemoryMb} Gres=gpu:${GPUS.length} State=UNKNOWN`,
    `PartitionName=debug Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP`,
    '',
  ].join('\n');
}

const CG = MOUNT;
const readCg = (rel: string): string => {
  try {
    return fs.readFileSync(path.join(CG, rel), 'utf8').trim();
  } catch (err) {
    return `(${(err as NodeJS.ErrnoException).code})`;
  }
};
const aboveScope = (): string => `root subtree_control [${readCg('cgroup.subtree_control')}]; system.slice ${fs.existsSync(path.join(CG, 'system.slice')) ? `subtree_control [${readCg('system.slice/cgroup.subtree_control')}], children [${fs.readdirSync(path.join(CG, 'system.slice'), { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name).join(' ')}]` : 'absent'}`;

/**
 * Before a block: nothing of the previous mode is left above the node's scope.
 * Slurm 22.05 with IgnoreSystemd neither creates system.slice nor enables the
 * controllers above its scope, so the native mode gets them made by hand (as an
 * admin would); the cgstep mode starts from a bare root and the agent makes them.
 */
async function prepareAbove(mode: Mode): Promise<void> {
  await removeRoot(path.join(CG, 'system.slice'));
  const enabled = readCg('cgroup.subtree_control').split(/\s+/).filter(Boolean);
  if (enabled.length) fs.writeFileSync(path.join(CG, 'cgroup.subtree_control'), enabled.map((c) => `-${c}`).join(' '));
  if (mode === 'native') {
    fs.mkdirSync(path.join(CG, 'system.slice'));
    fs.writeFileSync(path.join(CG, 'cgroup.subtree_control'), '+cpuset +cpu +memory +pids');
    fs.writeFileSync(path.join(CG, 'system.slice/cgroup.subtree_control'), '+cpuset +cpu +memory +pids');
  }
}

interface Cluster { mode: Mode; dir: string; env: NodeJS.ProcessEnv; daemons: Daemon[]; agent: BenchAgent | null }

async function startCluster(mode: Mode, index: number, mungeSocket: string, res: GuestResult): Promise<Cluster> {
  const dir = path.join(W, `block${index}-${mode}`);
  for (const d of ['state', 'spool', 'log', 'run']) fs.mkdirSync(path.join(dir, d), { recursive: true });
  await prepareAbove(mode);
  const before = aboveScope();
  let agent: BenchAgent | null = null;
  if (mode === 'cgstep') {
    const a0 = performance.now();
    agent = await startAgent(CG, ['--node-name', NODE, '--config', path.join(W, 'cgroup.conf'), '--gres', path.join(W, 'gres.conf'), '--metrics', `127.0.0.1:${METRICS_PORT}`], fs.mkdtempSync(path.join(W, 'sock-')), cfg.agentLog ? path.join(OUT, `cgstepd-block${index}.log`) : undefined, cfg.agentProfile ? ['--cpu-prof', '--cpu-prof-dir', OUT] : []);
    say(`block ${index} (cgstep): cgstepd ready in ${((performance.now() - a0) / 1000).toFixed(1)} s`);
  }
  fs.writeFileSync(path.join(dir, 'plugstack.conf'), mode === 'cgstep' ? `required ${cfg.plugin} socket=${agent!.socket}\n` : '');
  // Slurm reads cgroup.conf next to slurm.conf, in both modes (as on a real node).
  fs.copyFileSync(path.join(W, 'cgroup.conf'), path.join(dir, 'cgroup.conf'));
  fs.copyFileSync(path.join(W, 'gres.conf'), path.join(dir, 'gres.conf'));
  const conf = path.join(dir, 'slurm.conf');
  fs.writeFileSync(conf, slurmConf(mode, dir, mungeSocket));
  const env = clusterEnv(conf);
  const c: Cluster = { mode, dir, env, daemons: [], agent };
  try {
    // The harness's own startSlurmctld waits 30 s: too short for an emulated guest on a busy host.
    const ctldLog = path.join(dir, 'log/slurmctld.out');
    const ctld = startDaemon('slurmctld', 'slurmctld', ['-D', '-i', '-f', conf], env, ctldLog);
    c.daemons.push(ctld);
    await waitFor('slurmctld up', async () => /is UP/.test((await run('scontrol', ['ping'], { env, timeoutMs: 30000 })).stdout), 180000, ctld, ctldLog);
    const slurmd = startDaemon('slurmd', 'slurmd', ['-D', '-N', NODE, '-f', conf], env, path.join(dir, 'log/slurmd.out'));
    c.daemons.push(slurmd);
    await waitFor('slurmd idle', async () => /^idle/m.test((await run('sinfo', ['-h', '-n', NODE, '-o', '%T'], { env, timeoutMs: 30000 })).stdout), 180000, slurmd, path.join(dir, 'log/slurmd.log'));
  } catch (err) {
    await stopCluster(c);
    throw err;
  }
  res.above[mode] ??= { before, after: aboveScope() };
  return c;
}

async function stopCluster(c: Cluster): Promise<void> {
  await endCluster(c.env.SLURM_CONF!, c.daemons);
  await c.agent?.stop();
}

async function srun(c: Cluster, args: string[], timeoutMs = 120000): Promise<RunResult> {
  return run('srun', args, { env: c.env, timeoutMs, cwd: c.dir });
}

/** The lines a task prints about itself: its cgroup, CPUs, each ancestor's memory.max, Slurm's record of its allocation. */
const SELF = [
  'cg=$(sed -n "s/^0:://p" /proc/self/cgroup)',
  'echo "cgroup $cg"',
  'grep Cpus_allowed_list /proc/self/status',
  'd=/sys/fs/cgroup$cg',
  'echo "cpuset.cpus.effective $(cat $d/cpuset.cpus.effective)"',
  'while [ "$d" != /sys/fs/cgroup ]; do echo "memory.max ${d#/sys/fs/cgroup} $(cat $d/memory.max)"; d=${d%/*}; done',
  'scontrol show job -d $SLURM_JOB_ID | grep -o "CPU_IDs=[^ ]*\\|GRES=[^ ]*"',
].join('; ');

/** Slurm's memory formula, written out independently: alloc * AllowedRAMSpace %, at least MinRAMSpace, down to a page. */
function expectedMax(allocMb: number): number {
  const v = Math.max(Math.floor((allocMb * MiB * ALLOWED_RAM) / 100), MIN_RAM_MB * MiB);
  return v - (v % 4096);
}

/** The smallest memory.max on the task's path (the limit the task lives under). */
function effectiveMax(out: string): { max: number | null; at: string } {
  let best: { max: number | null; at: string } = { max: null, at: '' };
  for (const m of out.matchAll(/^memory\.max (\S+) (\d+)$/gm)) if (best.max === null || Number(m[2]) < best.max) best = { max: Number(m[2]), at: m[1] };
  return best;
}

/** Expand "0-1,3" into [0,1,3]. */
function cpuList(s: string): number[] {
  const out: number[] = [];
  for (const part of s.split(',').filter(Boolean)) {
    const [a, b] = part.split('-').map(Number);
    for (let i = a; i <= (b ?? a); i++) out.push(i);
  }
  return out;
}

async function checkMemoryCpuset(c: Cluster): Promise<{ memory: CheckResult; cpuset: CheckResult }> {
  const memory: CheckResult = { ok: true, detail: [] };
  const cpuset: CheckResult = { ok: true, detail: [] };
  for (const [mem, cpus] of [[100, 2], [20, 1]]) {
    const r = await srun(c, ['-n1', `-c${cpus}`, `--mem=${mem}`, 'sh', '-c', SELF]);
    const o = r.stdout;
    if (r.code !== 0) {
      memory.ok = cpuset.ok = false;
      memory.detail.push(`--mem=${mem} -c${cpus}: srun exit ${r.code}: ${r.stderr.trim().slice(-400)}`);
      continue;
    }
    const eff = effectiveMax(o);
    const want = expectedMax(mem);
    const memOk = eff.max === want;
    memory.ok &&= memOk;
    memory.detail.push(`--mem=${mem}: memory.max ${eff.max} at ${eff.at} (formula ${want}) ${memOk ? 'ok' : 'WRONG'}; task cgroup ${/^cgroup (\S+)/m.exec(o)?.[1]}`);
    const ids = /CPU_IDs=(\S+)/.exec(o)?.[1] ?? '';
    const allowed = /Cpus_allowed_list:\s*(\S+)/.exec(o)?.[1] ?? '';
    const eff2 = /^cpuset\.cpus\.effective (\S+)/m.exec(o)?.[1] ?? '';
    const same = (a: string, b: string) => a !== '' && cpuList(a).join(',') === cpuList(b).join(',');
    const cpuOk = same(ids, allowed) && same(ids, eff2) && cpuList(ids).length === cpus;
    cpuset.ok &&= cpuOk;
    cpuset.detail.push(`-c${cpus}: Slurm CPU_IDs=${ids}, Cpus_allowed_list ${allowed}, cpuset.cpus.effective ${eff2} ${cpuOk ? 'ok' : 'WRONG'}`);
  }
  return { memory, cpuset };
}

/** A task that reads 200 MB at once under --mem=50: the kernel's memory-cgroup OOM killer ends it inside the job's cgroup. */
async function checkOom(c: Cluster): Promise<CheckResult> {
  const before = sh('dmesg').split('\n').length;
  const r = await srun(c, ['-n1', '--mem=50', 'sh', '-c', 'echo JOB=$SLURM_JOB_ID; exec dd if=/dev/zero of=/dev/null bs=200M count=1']);
  const job = /JOB=(\d+)/.exec(r.stdout)?.[1];
  await sleep(500);
  const fresh = sh('dmesg').split('\n').slice(before - 1);
  const kill = fresh.find((l) => /oom-kill:constraint=CONSTRAINT_MEMCG/.test(l) && job !== undefined && l.includes(`/job_${job}/`) && /task=dd\b/.test(l));
  const ok = r.code !== 0 && kill !== undefined;
  return { ok, detail: [`srun --mem=50 dd bs=200M: exit ${r.code}, job ${job}; ${kill ? kill.replace(/^\[[^\]]*\]\s*/, '') : 'no memory-cgroup oom-kill line for it in dmesg'}`, r.stderr.trim().split('\n').slice(-2).join(' | ')] };
}

const OPEN_GPUS = `perl -e 'for (@ARGV) { if (open(my $f, "<", $_)) { print "$_ opened\\n" } else { print "$_ $!\\n" } }' ${GPUS.join(' ')}`;

/** Without --gres both fake GPUs are denied (EPERM); with --gres=gpu:1 exactly the allocated one reaches the (absent) driver (ENXIO). */
async function checkDevices(c: Cluster): Promise<CheckResult> {
  const detail: string[] = [];
  const none = await srun(c, ['-n1', 'sh', '-c', OPEN_GPUS]);
  let ok = none.code === 0 && GPUS.every((g) => new RegExp(`^${g} Operation not permitted$`, 'm').test(none.stdout));
  detail.push(`no --gres: ${none.stdout.trim().replace(/\n/g, '; ')} ${ok ? 'ok' : 'WRONG'} ${none.code !== 0 ? none.stderr.slice(-300) : ''}`.trim());
  const one = await srun(c, ['-n1', '--gres=gpu:1', 'sh', '-c', `scontrol show job -d $SLURM_JOB_ID | grep -o "GRES=[^ ]*"; ${OPEN_GPUS}`]);
  const idx = /IDX:(\d+)\)/.exec(one.stdout)?.[1];
  const oneOk = one.code === 0 && idx !== undefined && GPUS.every((g, i) => new RegExp(`^${g} ${String(i) === idx ? 'No such device or address' : 'Operation not permitted'}$`, 'm').test(one.stdout));
  detail.push(`--gres=gpu:1 (Slurm IDX ${idx}): ${one.stdout.trim().replace(/\n/g, '; ')} ${oneOk ? 'ok' : 'WRONG'} ${one.code !== 0 ? one.stderr.slice(-300) : ''}`.trim());
  ok &&= oneOk;
  return { ok, detail };
}

async function timeSruns(c: Cluster, args: string[], n: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const r = await srun(c, args);
    if (r.code !== 0) throw new Error(`srun ${args.join(' ')} failed (${r.code}): ${r.stderr.slice(-600)}`);
    out.push(r.ms);
  }
  return out;
}

/** Submit jobs `sbatch --wrap=true` (four submitters at once), wait until the queue is empty: seconds from the first submission. */
async function sbatchBurst(c: Cluster, jobs: number): Promise<number> {
  const s = performance.now();
  let next = 0;
  const submitter = async () => {
    while (next < jobs) {
      next++;
      const r = await run('sbatch', ['-Q', '-o', '/dev/null', '-e', '/dev/null', '--wrap=true'], { env: c.env, timeoutMs: 60000, cwd: c.dir });
      if (r.code !== 0) throw new Error(`sbatch failed (${r.code}): ${r.stderr.slice(-400)}`);
    }
  };
  await Promise.all([submitter(), submitter(), submitter(), submitter()]);
  // Polled every 2 s: each squeue costs the emulated guest about a second of CPU, taken from the jobs.
  while ((await run('squeue', ['-h', '-o', '%i'], { env: c.env, timeoutMs: 30000 })).stdout.trim() !== '') {
    if (performance.now() - s > 1800000) throw new Error(`sbatch jobs still queued after 30 min`);
    await sleep(2000);
  }
  return (performance.now() - s) / 1000;
}

async function scrapeAgent(): Promise<Record<string, { count: number; sumS: number }>> {
  const text = await (await fetch(`http://127.0.0.1:${METRICS_PORT}/metrics`)).text();
  const ops: Record<string, { count: number; sumS: number }> = {};
  for (const m of text.matchAll(/^cgstep_request_duration_seconds_(sum|count)\{([^}]*)\} (\S+)$/gm)) {
    const op = /op="([^"]+)"/.exec(m[2])?.[1];
    if (!op) continue;
    ops[op] ??= { count: 0, sumS: 0 };
    if (m[1] === 'sum') ops[op].sumS = Number(m[3]);
    else ops[op].count = Number(m[3]);
  }
  return ops;
}

function share(total: number, blocks: number, nth: number): number {
  return Math.floor(total / blocks) + (nth < total % blocks ? 1 : 0);
}

/**
 * Before the first block, each mode once untimed: the guest's first launches
 * of Slurm (and of node) after boot are slower, and without this the mode that
 * comes first paid for it (one block 20-40 % slower than the others).
 */
async function warmUp(mode: Mode, index: number, mungeSocket: string, res: GuestResult): Promise<void> {
  const c = await startCluster(mode, index, mungeSocket, res);
  try {
    await timeSruns(c, ['-n1', 'true'], 4);
    await timeSruns(c, [`-n${cfg.tasks}`, '-O', 'true'], 1);
    say(`warm-up (${mode}) done`);
  } finally {
    await stopCluster(c);
  }
}

async function runBlock(mode: Mode, index: number, mungeSocket: string, res: GuestResult): Promise<void> {
  const perMode = cfg.order.filter((m) => m === mode).length;
  const nth = cfg.order.slice(0, index).filter((m) => m === mode).length;
  const b: BlockResult = { mode, index, startMs: Math.round(performance.now() - t0), n1: [], many: [], sbatch: null };
  res.blocks.push(b);
  say(`block ${index} (${mode}): starting ${mode === 'cgstep' ? 'cgstepd, ' : ''}slurmctld, slurmd`);
  const c = await startCluster(mode, index, mungeSocket, res);
  try {
    say(`block ${index} (${mode}): node idle after ${((performance.now() - t0) / 1000 - b.startMs / 1000).toFixed(1)} s`);
    await timeSruns(c, ['-n1', 'true'], 2); // warm-up: the first launches after a start are slower
    const had = res.checks[mode];
    if (cfg.checks && (!had || !Object.values(had).every((v) => v.ok))) {
      if (had) (res.failedChecks[mode] ??= []).push(had);
      const { memory, cpuset } = await checkMemoryCpuset(c);
      const oom = await checkOom(c);
      const devices = await checkDevices(c);
      const now = (res.checks[mode] = { memory, cpuset, oom, devices });
      for (const [k, v] of Object.entries(now)) say(`  ${mode} ${k}: ${v.ok ? 'PASS' : 'FAIL'} — ${v.detail.join(' / ')}`);
      if (!Object.values(now).every((v) => v.ok)) say(`slurmd log tail: ${readLog(path.join(c.dir, 'log/slurmd.log')).slice(-3000)}`);
      save(res);
    }
    b.n1 = await timeSruns(c, ['-n1', 'true'], share(cfg.n1, perMode, nth));
    say(`block ${index} (${mode}): srun -n1 true x${b.n1.length}, median ${median(b.n1).toFixed(0)} ms`);
    save(res);
    b.many = await timeSruns(c, [`-n${cfg.tasks}`, '-O', 'true'], share(cfg.many, perMode, nth));
    say(`block ${index} (${mode}): srun -n${cfg.tasks} -O true x${b.many.length}, median ${median(b.many).toFixed(0)} ms`);
    save(res);
    const jobs = share(cfg.sbatch, perMode, nth);
    if (jobs > 0) {
      b.sbatch = { jobs, seconds: await sbatchBurst(c, jobs) };
      say(`block ${index} (${mode}): ${jobs} sbatch jobs in ${b.sbatch.seconds.toFixed(1)} s`);
    }
    if (c.agent) b.agentOps = await scrapeAgent().catch(() => undefined);
  } catch (err) {
    b.error = String((err as Error).stack ?? err);
    say(`block ${index} (${mode}) FAILED: ${b.error}`);
    say(`slurmd log tail: ${readLog(path.join(c.dir, 'log/slurmd.log')).slice(-2000)}`);
  } finally {
    await stopCluster(c);
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)] : NaN;
}

function save(res: GuestResult): void {
  res.wallS = Math.round((performance.now() - t0) / 100) / 10;
  fs.writeFileSync(path.join(OUT, 'slurm-vm.json.tmp'), JSON.stringify(res, null, 1));
  fs.renameSync(path.join(OUT, 'slurm-vm.json.tmp'), path.join(OUT, 'slurm-vm.json'));
}

const res: GuestResult = {
  config: cfg,
  kernel: sh('uname -r').trim(),
  slurm: sh('slurmd -V').trim(),
  nproc: Number(sh('nproc').trim()),
  memTotalKiB: Number(/MemTotal:\s+(\d+)/.exec(fs.readFileSync('/proc/meminfo', 'utf8'))![1]),
  controllers: readCg('cgroup.controllers'),
  blocks: [],
  checks: {},
  failedChecks: {},
  above: {},
  wallS: 0,
  done: false,
};
let munged: Daemon | undefined;
try {
  say(`${res.slurm}, kernel ${res.kernel}, ${res.nproc} CPUs, controllers [${res.controllers}]; blocks ${cfg.order.join(' ')}`);
  const m = await nodeSetup();
  munged = m.daemon;
  for (const [i, mode] of [...new Set(cfg.order)].entries()) await warmUp(mode, 100 + i, m.socket, res);
  for (let i = 0; i < cfg.order.length; i++) {
    await runBlock(cfg.order[i], i, m.socket, res);
    save(res);
  }
  res.done = true;
} catch (err) {
  res.error = String((err as Error).stack ?? err);
  say(`FAILED: ${res.error}`);
} finally {
  if (munged) await stopDaemon(munged);
  await removeRoot(path.join(CG, 'system.slice')).catch(() => undefined);
  save(res);
  say('done');
}
