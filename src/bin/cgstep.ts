#!/usr/bin/env node
/**
 * cgstep: the command-line client of cgstepd. Human output by default,
 * --json for scripts. Every command is one or two requests through
 * rpc/client; `run` also starts the command, held before exec until the agent
 * has placed it in its task leaf (as slurmstepd does).
 */
import { spawn } from 'node:child_process';
import os from 'node:os';
import type { Command as Cmd } from 'commander';
import { EnvCommand, USAGE_EXIT, UsageError, commandPath, intArg, opt, sizeArg, strList, usageLine } from '../config/cli.js';
import { AGENT_VERSION } from '../rpc/version.js';
import { SORT_KEYS, runTop } from './top.js';
import { formatSize } from '../config/size.js';
import { AgentError } from '../errors.js';
import { CgstepClient, DEFAULT_SOCKET } from '../rpc/client.js';
import type { DeviceRequest, Limits } from '../rpc/protocol.js';

const program = new EnvCommand('cgstep')
  .version(AGENT_VERSION, '-V, --version', 'print the version and exit')
  .description('client of cgstepd, the cgroup v2 job/step/task agent')
  .addOption(opt('--socket <path>', 'agent socket').default(DEFAULT_SOCKET))
  .addOption(opt('--json', 'machine-readable output'))
  .addOption(opt('--timeout <ms>', 'request timeout').argParser(intArg('timeout', 1, 3600000)).default(30000))
  .addOption(opt('--wait <ms>', 'wait up to this long for the agent socket to appear (back-off 1 ms doubling to 250 ms)').argParser(intArg('wait', 0, 3600000)).default(0));

const g = () => program.opts<{ socket: string; json?: boolean; timeout: number; wait: number }>();

async function connect(): Promise<CgstepClient> {
  try {
    return await CgstepClient.connect(g().socket, { timeoutMs: g().timeout, waitMs: g().wait });
  } catch (err) {
    const e = err as AgentError;
    if (g().wait > 0 && (e as { errno?: string }).errno !== 'EAGAIN') throw new AgentError(e.code ?? 'EIO', `gave up waiting ${g().wait} ms for the agent socket: ${e.message}`);
    throw err;
  }
}

async function withClient<T>(fn: (c: CgstepClient) => Promise<T>): Promise<T> {
  const c = await connect();
  try {
    return await fn(c);
  } finally {
    c.close();
  }
}

function print(result: unknown, human: (r: any) => string): void {
  process.stdout.write((g().json ? JSON.stringify(result) : human(result)) + '\n');
}

function addLimitOptions(cmd: Cmd): Cmd {
  return cmd
    .option('--cpus <list>', 'cpuset.cpus, e.g. 0-3,8')
    .option('--mems <list>', 'cpuset.mems')
    .option('--memory <size>', 'allocated RAM (memory.max/high from cgroup.conf formulas): a bare number is MiB (as Slurm\'s --mem), or K/M/G/T, e.g. 4G', sizeArg('--memory'))
    .option('--swap <size>', 'memory.swap.max: a bare number is MiB, or K/M/G/T', sizeArg('--swap'))
    .option('--pids <n>', 'pids.max', intArg('--pids', 1, 0x3fffffff))
    .option('--cpu-max <quota period>', 'cpu.max, e.g. "50000 100000" or max')
    .option('--cpu-weight <n>', 'cpu.weight 1-10000', intArg('--cpu-weight', 1, 10000))
    .option('--oom-group', 'memory.oom.group: an OOM kill takes the whole step')
    .option('--device-allow <rule>', 'allow a device: "c 195:0 rw", "/dev/nvidia0" (repeatable)', strList)
    .option('--device-deny <rule>', 'deny a device (repeatable)', strList)
    .option('--gres <dev>', 'allocated gres device: "gpu:0" or a path from gres.conf (repeatable)', strList)
    .option('--device-policy <mode>', 'open or closed');
}

function limitsOf(o: any): Limits | undefined {
  const l: Limits = {};
  if (o.cpus !== undefined) l.cpus = o.cpus;
  if (o.mems !== undefined) l.mems = o.mems;
  if (o.memory !== undefined) l.memory = o.memory;
  if (o.swap !== undefined) l.swap = o.swap;
  if (o.pids !== undefined) l.pids = o.pids;
  if (o.cpuMax !== undefined) l.cpuMax = o.cpuMax;
  if (o.cpuWeight !== undefined) l.cpuWeight = o.cpuWeight;
  if (o.oomGroup) l.oomGroup = true;
  return Object.keys(l).length ? l : undefined;
}

function devicesOf(o: any): DeviceRequest | undefined {
  const d: DeviceRequest = {};
  if (o.deviceAllow?.length) d.allow = o.deviceAllow;
  if (o.deviceDeny?.length) d.deny = o.deviceDeny;
  if (o.gres?.length) d.gres = o.gres;
  if (o.devicePolicy) {
    if (o.devicePolicy !== 'open' && o.devicePolicy !== 'closed') throw new UsageError(`--device-policy must be open or closed, not ${JSON.stringify(o.devicePolicy)}`, 'cgstep');
    d.policy = o.devicePolicy;
  }
  return Object.keys(d).length ? d : undefined;
}

const withArgs = <T extends object>(base: T, extra: Record<string, unknown>): T => {
  for (const [k, v] of Object.entries(extra)) if (v !== undefined) (base as Record<string, unknown>)[k] = v;
  return base;
};

program.command('status').description('agent, scope, controllers, counts').action(() =>
  withClient(async (c) => {
    const s = await c.request('status', {});
    print(s, (r) =>
      [
        `cgstepd ${r.version} (protocol ${r.protocol}), pid ${r.pid}, up ${r.uptimeSec}s`,
        `scope:       ${r.scope} (${r.mode} mode${r.adopted ? ', adopted' : ''})`,
        `infinity:    pid ${r.infinityPid}`,
        `controllers: available ${r.controllers.available.join(' ') || '-'}; enabled ${r.controllers.enabled.join(' ') || '-'}${r.controllers.missing.length ? `; missing ${r.controllers.missing.join(' ')}` : ''}`,
        ...(r.devices ? [`devices:     ${r.devices.supported ? `eBPF${r.devices.replace ? ' (atomic replace)' : ''}, default policy ${r.devices.defaultPolicy ?? 'open'}` : `unavailable: ${r.devices.reason}`}`] : []),
        ...(r.config ? configLines(r.config) : (r.devices?.gres ?? []).map((g: string) => `gres:        ${g}`)),
        ...(r.backends ? r.backends.map((b: any) => `backend:     ${b.type} ${b.version} (${b.reason})`) : []),
        `jobs:        ${r.jobs}, steps ${r.steps}`,
        `socket:      ${r.socket}, ${r.connections} connection(s)`,
        ...(r.degraded?.length ? r.degraded.map((d: string) => `degraded:    ${d}`) : []),
      ].join('\n'),
    );
  }),
);

/** The configuration part of `cgstep status`: files, settings, controllers, dropped-limits mode, gres files. */
function configLines(c: any): string[] {
  const yn = (b: boolean) => (b ? 'yes' : 'no');
  const k = c.constrain;
  const set = (key: string) => (k.explicit.includes(key.toLowerCase()) ? '' : ' (default)');
  // The Constrain* settings need their controllers; --pids and --cpu-max/--cpu-weight need theirs whatever the settings.
  const perLimit = ['pids', 'cpu'].filter((x) => !c.controllers.required.includes(x));
  const absent = [...c.controllers.missing, ...perLimit.filter((x) => !c.controllers.available.includes(x))];
  const mode = c.missingControllerLimits === 'skip' ? 'skipped and NOT enforced (--ignore-missing-controllers)' : 'refused (ENOTSUP; --ignore-missing-controllers would accept them unenforced)';
  const missing = absent.length ? `; MISSING ${absent.join(' ')}: limits on ${absent.length > 1 ? 'them' : 'it'} are ${mode}` : '';
  return [
    `config:      cgroup.conf ${c.files.cgroupConf ?? 'none (defaults)'}; gres.conf ${c.files.gresConf ?? 'none'}`,
    `constrain:   ConstrainCores=${yn(k.cores)}${set('constrainCores')}, ConstrainRAMSpace=${yn(k.ramSpace)}${set('constrainRAMSpace')} (AllowedRAMSpace=${k.allowedRAMSpacePercent}%, MaxRAMPercent=${k.maxRAMPercent}%, MinRAMSpace=${k.minRAMSpaceMiB} MiB), ConstrainSwapSpace=${yn(k.swapSpace)}${set('constrainSwapSpace')} (AllowedSwapSpace=${k.allowedSwapSpacePercent}%, MaxSwapPercent=${k.maxSwapPercent}%), ConstrainDevices=${yn(k.devices)}${set('constrainDevices')}`,
    ...(c.unsupportedKeys.length ? [`unsupported: ${c.unsupportedKeys.join(', ')} (in cgroup.conf, ignored)`] : []),
    `limits need: ${c.controllers.required.join(' ') || 'nothing'} (Constrain* settings), ${perLimit.map((x) => (x === 'pids' ? 'pids (--pids)' : 'cpu (--cpu-max, --cpu-weight)')).join(', ') || 'nothing more'} (limits asked for)${missing}`,
    `device default: ${c.devicePolicy.constrainDevices ? `policy ${c.devicePolicy.default}` : 'none (ConstrainDevices=no)'}`,
    ...c.gres.map((g: any) => `gres:        ${g.name}:${g.index} ${g.file}${g.exists ? '' : ' (MISSING: no such file now; device policies deny the numbers it had when last seen, and are refused if it was never seen)'}`),
    ...(c.userCaps ? [`user caps:   ${c.userCaps.jobs} live job(s), ${c.userCaps.steps} step(s), ${c.userCaps.tasks} task leaves per uid other than root and operators (--max-user-jobs, --max-user-steps, --max-user-tasks)`] : []),
  ];
}

/** "mem 1.2G/4G, cpus 2, pids 3/100, cpu.max 0.5" from a list entry's figures; missing parts left out. */
function figures(x: { limits: any; usage: any }): string {
  const l = x.limits ?? {};
  const u = x.usage ?? {};
  const parts: string[] = [];
  if (u.memoryCurrent !== null && u.memoryCurrent !== undefined) parts.push(`mem ${formatSize(u.memoryCurrent)}/${l.memoryMax !== null && l.memoryMax !== undefined ? formatSize(l.memoryMax) : 'max'}`);
  else if (l.memoryMax !== null && l.memoryMax !== undefined) parts.push(`mem max ${formatSize(l.memoryMax)}`);
  if (l.cpus !== null && l.cpus !== undefined) parts.push(`cpus ${l.cpus}`);
  if (u.pids !== null && u.pids !== undefined) parts.push(`pids ${u.pids}/${l.pidsMax ?? 'max'}`);
  if (l.cpuQuotaUsec !== null && l.cpuQuotaUsec !== undefined) parts.push(`cpu.max ${(l.cpuQuotaUsec / l.cpuPeriodUsec).toFixed(2)} CPU`);
  if (u.oomKills) parts.push(`oom_kill ${u.oomKills}`);
  return parts.length ? `, ${parts.join(', ')}` : '';
}

program.command('list').description('jobs, steps and tasks, with frozen state, task counts, limits and use').action(() =>
  withClient(async (c) => {
    const r = await c.request('list', {});
    print(r, (x) => {
      if (!x.jobs.length) return 'no jobs';
      const lines: string[] = [];
      for (const j of x.jobs) {
        lines.push(`job ${j.job}: ${j.steps.length} step(s)${j.populated ? '' : ' (empty)'}${figures(j)}`);
        for (const s of j.steps) lines.push(`  step ${s.step}: ${s.tasks.length} task(s)${s.frozen ? ' FROZEN' : ''}${s.populated ? '' : ' (empty)'}${s.tasks.length ? ` [${s.tasks.join(' ')}]` : ''}${figures(s)}`);
      }
      return lines.join('\n');
    });
  }),
);

program
  .command('top')
  .description('live view of jobs and steps (CPU %, memory current/max, pids, OOM kills, frozen), as systemd-cgtop')
  .option('--once', 'one refresh (two samples one interval apart) and exit')
  .option('--interval <ms>', 'refresh period', intArg('--interval', 100, 3600000), 2000)
  .option('--iterations <n>', 'refreshes before exiting (default: until interrupted; 1 with --once)', intArg('--iterations', 1, 1000000))
  .option('--sort <key>', `sort by ${SORT_KEYS.join(', ')}`, 'cpu')
  .action((o) =>
    withClient(async (c) => {
      if (!SORT_KEYS.includes(o.sort)) throw new UsageError(`--sort must be one of ${SORT_KEYS.join(', ')}, not ${JSON.stringify(o.sort)}`, 'cgstep top');
      await runTop(() => c.request('list', {}), { intervalMs: o.interval, sort: o.sort, json: !!g().json, iterations: o.once ? 1 : (o.iterations ?? 0), tty: !!process.stdout.isTTY, write: (t) => process.stdout.write(t) });
    }),
  );

/** Limits the agent skipped (--ignore-missing-controllers): said on stderr (stdout stays the result), never hidden. */
function warnNotEnforced(r: any): void {
  const skipped: string[] = [...(r.skipped ?? []), ...(r.job?.skipped ?? []), ...(r.step?.skipped ?? [])];
  if (skipped.length) process.stderr.write(`cgstep: WARNING: not enforced (controller missing on this node): ${[...new Set(skipped)].join(', ')}\n`);
}

/** print(), after the warning of what the agent skipped. */
function printChecked(result: any, human: (r: any) => string): void {
  warnNotEnforced(result);
  print(result, human);
}

const job = program.command('job').description('job commands');
addLimitOptions(job.command('create <job>').description('create a job (or update its limits)'))
  .option('--owner <uid>', 'the uid the job belongs to (root and operators only)', intArg('--owner', 0, 0xfffffffe))
  .action((j, o) =>
    withClient(async (c) => printChecked(await c.request('job.create', withArgs({ job: j }, { limits: limitsOf(o), devices: devicesOf(o), owner: o.owner })), (r) => `job ${r.job} ${r.created ? 'created' : 'updated'}: ${r.path}`)),
  );

const step = program.command('step').description('step commands');
addLimitOptions(step.command('create <job> <step>').description('create a step (and its job) or update its limits')).action((j, s, o) =>
  withClient(async (c) => printChecked(await c.request('step.create', withArgs({ job: j, step: s }, { limits: limitsOf(o), devices: devicesOf(o) })), (r) => `step ${r.job}.${r.step} ${r.created ? 'created' : 'updated'}: ${r.path}`)),
);

program
  .command('attach <job> <step> <pid>')
  .description('move a running process into a task, task_special, or the step daemon leaf')
  .option('--task <n>', 'task number', intArg('--task', 0, 0x7fffffff))
  .option('--special', 'user/task_special')
  .option('--slurm', 'the step daemon leaf slurm/')
  .action((j, s, pid, o) =>
    withClient(async (c) => {
      const n = [o.task !== undefined, !!o.special, !!o.slurm].filter(Boolean).length;
      if (n > 1) throw new UsageError('give only one of --task, --special, --slurm', 'cgstep attach');
      const args = withArgs({ job: j, step: s, pid: intArg('pid', 1, 0x3fffffff)(pid) }, { task: o.task, leaf: o.special ? 'special' : o.slurm ? 'slurm' : undefined });
      print(await c.request('attach', args), (r) => `pid ${r.pid} -> ${r.path}`);
    }),
  );

program
  .command('devices <job> [step]')
  .description('replace the device policy of a job, step (user/) or task')
  .option('--task <n>', 'task number', intArg('--task', 0, 0x7fffffff))
  .option('--device-allow <rule>', 'allow a device (repeatable)', strList)
  .option('--device-deny <rule>', 'deny a device (repeatable)', strList)
  .option('--gres <dev>', 'allocated gres device (repeatable)', strList)
  .option('--device-policy <mode>', 'open or closed')
  .action((j, s, o) =>
    withClient(async (c) => {
      const devices = devicesOf(o) ?? {};
      print(await c.request('devices.set', withArgs({ job: j, devices }, { step: s, task: o.task })), (r) => `device policy set on ${r.path}${r.deviceProgram ? ` (program ${r.deviceProgram})` : ''}`);
    }),
  );

function statsLine(name: string, st: any): string {
  const cpu = st.cpu ? `cpu ${(st.cpu.usageUsec / 1e6).toFixed(3)}s (user ${(st.cpu.userUsec / 1e6).toFixed(3)}s sys ${(st.cpu.systemUsec / 1e6).toFixed(3)}s)` : 'cpu n/a';
  const mem = st.memory ? `mem ${formatSize(st.memory.current)}${st.memory.peak !== null ? ` peak ${formatSize(st.memory.peak)}` : ''}` : 'mem n/a';
  const oom = st.oomKill !== null ? `oom_kill ${st.oomKill}` : 'oom n/a';
  const pids = st.pids ? `pids ${st.pids.current}/${st.pids.max}` : 'pids n/a';
  return `${name.padEnd(14)} ${cpu}, ${mem}, ${oom}, ${pids}`;
}

program.command('stats <job> [step]').description('accounting: cpu, memory, oom kills, pids, io').action((j, s) =>
  withClient(async (c) => {
    const r = await c.request('stats', withArgs({ job: j }, { step: s }));
    print(r, (x) => {
      const lines: string[] = [];
      /** "devices: default allow; c 195:1 -, c 195:* rw (program 12)" under a stats line. */
      const dev = (indent: string, d: any) => {
        if (d) lines.push(`${indent}devices: default ${d.default ?? '?'}${d.rules?.length ? `; ${d.rules.join(', ')}` : ''} (program ${d.ours.join(' ') || 'none'}${d.consistent ? '' : ', NOT the stored policy'})`);
      };
      if (x.total) {
        lines.push(statsLine(`job ${x.job}`, x.total));
        dev('  ', x.devices);
      }
      for (const st of x.steps) {
        lines.push(statsLine(`  step ${st.step}`, st.total));
        dev('    ', st.devices);
        for (const [t, ts] of Object.entries<any>(st.tasks)) {
          lines.push(statsLine(`    task ${t}`, ts));
          dev('      ', ts.devices);
        }
      }
      return lines.join('\n');
    });
  }),
);

program.command('signal <job> <step> <signal>').description("signal every process of a step's tasks (KILL uses cgroup.kill)").action((j, s, sig) =>
  withClient(async (c) => print(await c.request('signal', { job: j, step: s, signal: /^\d+$/.test(sig) ? Number(sig) : sig }), (r) => `${r.signal} sent to ${r.processes} process(es)`)),
);

for (const [name, op] of [['freeze', 'freeze'], ['thaw', 'thaw']] as const) {
  program.command(`${name} <job> [step]`).description(`${name} a step's tasks (cgroup.freeze)`).action((j, s) =>
    withClient(async (c) => print(await c.request(op, withArgs({ job: j }, { step: s })), (r) => `job ${r.job}${r.step !== undefined ? ` step ${r.step}` : ''} ${r.frozen ? 'frozen' : 'thawed'}`)),
  );
}

program
  .command('destroy <job> [step]')
  .description('remove a job or step; --force kills what still runs there')
  .option('--force', 'kill remaining processes (cgroup.kill) first')
  .action((j, s, o) =>
    withClient(async (c) =>
      print(await c.request('destroy', withArgs({ job: j }, { step: s, force: o.force ? true : undefined })), (r) => {
        const what = `job ${r.job}${r.step !== undefined ? ` step ${r.step}` : ''}`;
        return r.existed === false ? `${what} did not exist: nothing to destroy` : `destroyed ${what}${r.killed ? ` (killed ${r.killed} process(es))` : ''}`;
      }),
    ),
  );

program.command('events').description('print events as they happen (task/step/job empty, oom, frozen, thawed)').action(async () => {
  const c = await connect();
  await c.events((e) => {
    process.stdout.write(g().json ? JSON.stringify(e) + '\n' : `${e.time} ${e.event} job ${e.job}${e.step !== undefined ? ` step ${e.step}` : ''}${e.task !== undefined ? ` task ${e.task}` : ''}${e.oomKill !== undefined ? ` oom_kill ${e.oomKill}` : ''}\n`);
  });
  await c.closed();
  // Only the agent ends an event stream (a user ends it with ^C): say so, and fail.
  throw new AgentError('EIO', 'cgstepd closed the event stream (the agent stopped or restarted); no more events');
});

addLimitOptions(
  program
    .command('run')
    .usage('[JOB STEP] [--task N] [limits] -- CMD [ARGS...]')
    .description('run CMD in task N of the step, creating what is missing; exits with its status. Inside a Slurm allocation JOB, STEP and the task default to SLURM_JOB_ID, SLURM_STEP_ID and SLURM_PROCID')
    .option('--task <n>', 'task number (default SLURM_PROCID, else 0)', intArg('--task', 0, 0x7fffffff))
    .option('--verbose', 'say where JOB, STEP and the task came from')
    .argument('[args...]', 'JOB STEP -- CMD [ARGS...]'),
).action((args: string[], o) => {
  const { job, step, task, cmd, source } = splitRunArgs(process.argv, args, o.task, process.env);
  if (o.verbose) process.stderr.write(`cgstep: job ${job} step ${step} task ${task} (${source})\n`);
  return runCommand(job, step, cmd, { ...o, task });
});

/**
 * JOB and STEP are the operands before "--"; without them they come from a Slurm
 * allocation's environment. Exported for tests.
 */
export function splitRunArgs(argv: string[], operands: string[], task: number | undefined, env: NodeJS.ProcessEnv) {
  const dd = argv.indexOf('--');
  const cmdLen = dd >= 0 ? argv.length - dd - 1 : 0;
  const cmd = operands.slice(operands.length - cmdLen);
  const ids = operands.slice(0, operands.length - cmdLen);
  const usage = (m: string) => new UsageError(m, 'cgstep run');
  if (dd < 0) throw usage(operands.length ? `put -- before the command: cgstep run ${operands.length > 2 ? `${operands.slice(0, 2).join(' ')} -- ${operands.slice(2).join(' ')}` : 'JOB STEP -- CMD [ARGS...]'}` : 'missing the command: cgstep run [JOB STEP] -- CMD [ARGS...]');
  if (cmd.length === 0) throw usage('missing the command after --: cgstep run [JOB STEP] -- CMD [ARGS...]');
  if (ids.length === 2) return { job: ids[0], step: ids[1], task: task ?? 0, cmd, source: 'command line' };
  if (ids.length !== 0) throw usage(`expected JOB STEP before --, got ${ids.length} argument(s): ${ids.join(' ')}`);
  if (!env.SLURM_JOB_ID) throw usage('no JOB STEP given and not inside a Slurm allocation (SLURM_JOB_ID is unset)');
  const step = env.SLURM_STEP_ID ?? 'interactive';
  const slurmTask = env.SLURM_PROCID !== undefined && /^\d+$/.test(env.SLURM_PROCID) ? Number(env.SLURM_PROCID) : undefined;
  return { job: env.SLURM_JOB_ID, step, task: task ?? slurmTask ?? 0, cmd, source: `SLURM_JOB_ID=${env.SLURM_JOB_ID}, SLURM_STEP_ID=${env.SLURM_STEP_ID ?? '(unset: interactive)'}, SLURM_PROCID=${env.SLURM_PROCID ?? '(unset)'}` };
}

/**
 * Start CMD held before exec: a shell waits on fd 3 until the agent has moved
 * it into its leaf, then execs CMD, so CMD never runs an instruction outside it.
 */
async function runCommand(job: string, step: string, cmd: string[], o: any): Promise<void> {
  const c = await connect();
  let code = 1;
  try {
    const child = spawn('/bin/sh', ['-c', 'IFS= read -r go <&3 || exit 127; exec 3<&-; exec "$@"', 'cgstep-run', ...cmd], {
      stdio: ['inherit', 'inherit', 'inherit', 'pipe'],
    });
    const exited = new Promise<number>((resolve) => {
      child.on('exit', (codeOrNull, sig) => resolve(sig ? 128 + (os.constants.signals[sig] ?? 0) : (codeOrNull ?? 1)));
      child.on('error', () => resolve(127));
    });
    const gate = child.stdio[3] as NodeJS.WritableStream;
    try {
      // One request: a job made here is allocated the gres named, the step gets the limits and devices.
      const devices = devicesOf(o);
      const placed = await c.request('task.place', withArgs({ job, step, pid: child.pid!, task: o.task ?? 0 }, { stepLimits: limitsOf(o), stepDevices: devices, jobDevices: devices?.gres ? { gres: devices.gres } : undefined }));
      warnNotEnforced(placed);
      // An existing step keeps what it has (task.place never reconfigures one): said, so the flags are not thought in force.
      const asked = limitsOf(o) ?? devices;
      if (asked && !placed.step.created) process.stderr.write(`cgstep: note: step ${job}.${step} exists: its limits and devices are used as they are (the ones given here are not applied)\n`);
    } catch (err) {
      process.kill(child.pid!, 'SIGKILL');
      await exited;
      throw err;
    }
    c.close();
    gate.end('go\n');
    for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, () => child.kill(sig));
    code = await exited;
  } finally {
    c.close();
  }
  process.exitCode = code;
}

/**
 * Exit status: 2 for a usage error found here or an argument the protocol's
 * schema refuses (one line naming the --help to read), 1 for anything the
 * agent refused or that failed on the way, whatever
 * its code (`cgstep: CODE: message`), else 0 (or CMD's status for run).
 */
// The command being run, for a usage line about its arguments.
let running = 'cgstep';
program.hook('preAction', (_top, action) => {
  running = commandPath(action);
});

program.parseAsync().catch((err: unknown) => {
  // An id or value the protocol's schema refuses is the caller's typing, found by the agent's check: a usage error.
  if (err instanceof AgentError && err.code === 'EINVAL' && err.message.startsWith('invalid request: ')) err = new UsageError(err.message.slice('invalid request: '.length), running);
  if (err instanceof UsageError) {
    process.stderr.write(usageLine(err.command, err.message) + '\n');
    process.exitCode = USAGE_EXIT;
    return;
  }
  const e = err as AgentError;
  const code = e.code ?? 'EINTERNAL';
  if (g().json) process.stderr.write(JSON.stringify({ ok: false, error: { code, message: e.message } }) + '\n');
  else process.stderr.write(`cgstep: ${code}: ${e.message}\n`);
  process.exitCode = 1;
});
