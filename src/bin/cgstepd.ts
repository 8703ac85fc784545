#!/usr/bin/env -S node --max-semi-space-size=1 --heap-growing-percent=100
/**
 * cgstepd: the node agent's entry point. Parses options (command line, then
 * CGSTEP_* environment, then cgroup.conf), starts the agent, and stops it
 * gracefully on SIGTERM/SIGINT without touching running steps.
 *
 * The #! line keeps V8's young generation small (--max-semi-space-size=1):
 * the agent allocates little that lives, and the default 16 MiB semi-spaces
 * cost it 10-20 MiB of RSS for no measurable speed (bench/README.md). The
 * old generation may grow to twice what lived after the last full collection
 * (--heap-growing-percent=100; V8 picks up to 4x for a small heap): at 10,000
 * live steps about 8 MiB of RSS less, for more frequent full collections.
 */
import fs from 'node:fs';
import os from 'node:os';
import { pino } from 'pino';
import { AGENT_VERSION, startAgent } from '../agent.js';
import { defaultCgroupConf, loadCgroupConf } from '../config/cgroupconf.js';
import { EnvCommand, USAGE_EXIT, groupArg, intArg, intList, modeArg, opt } from '../config/cli.js';
import { ConfigError } from '../errors.js';
import { loadGresConf, type GresInventory } from '../devices/gres.js';
import { waitForGresFiles } from '../devices/paths.js';
import { parseListen } from '../metrics/listen.js';
import type { AgentOptions } from '../config/options.js';
import { DEFAULT_SOCKET } from '../rpc/client.js';
import { findCgroup2Mount, resolveCgroupRoot } from '../cgroupfs/mount.js';
import { moveSelfIntoSubgroup } from '../systemd/delegate.js';
import * as sd from '../systemd/notify.js';
import { LogSink } from '../sys/logsink.js';
import { prepareSocketDir } from '../sys/privdir.js';

/** How long a stop may take before the agent exits anyway (the unit's TimeoutStopSec is longer). */
const STOP_LIMIT_MS = 8000;

const program = new EnvCommand('cgstepd')
  .version(AGENT_VERSION, '-V, --version', 'print the version and exit')
  .description('cgroup v2 agent: a delegated job/step/task tree with eBPF device control')
  .addOption(opt('--socket <path>', 'control socket').default(DEFAULT_SOCKET))
  .addOption(opt('--socket-mode <octal>', 'socket file mode (default 0600; 0660 with --socket-group; 0666 with --allow-uid/--operator-uid/--read-only-gid and no group)').argParser(modeArg))
  .addOption(opt('--socket-group <group>', 'socket file group (name or gid)').argParser(groupArg))
  .addOption(opt('--lock-dir <dir>', 'root-only directory for the lock that keeps one agent per cgroup root').default('/run/cgstepd'))
  .addOption(opt('--cgroup-root <dir>', 'directory that plays the node cgroup root (default: the cgroup2 mount)'))
  .addOption(opt('--node-name <name>', 'scope becomes <name>_slurmstepd.scope'))
  .addOption(opt('--slice <name>', 'slice for the scope').default('system.slice'))
  .addOption(opt('--ignore-systemd', 'never talk to systemd: create the scope with mkdir (IgnoreSystemd)'))
  .addOption(opt('--ignore-systemd-on-failure', 'fall back to mkdir mode when systemd cannot be reached'))
  .addOption(opt('--dbus-address <addr>', 'D-Bus address of systemd (default: the system bus)'))
  .addOption(opt('--config <file>', "Slurm's cgroup.conf"))
  .addOption(opt('--gres <file>', "Slurm's gres.conf (device files of the node's gres)"))
  .addOption(opt('--gres-wait <ms>', "how long start-up waits for a gres.conf File= that does not exist yet before refusing to start (slurmd waits 20 s)").argParser(intArg('gres wait', 0, 600000)).default(20000))
  .addOption(opt('--device-policy <mode>', 'open (deny only what is denied) or closed (pseudo-devices plus allowed)').choices(['open', 'closed']).default('open'))
  .addOption(opt('--log-level <level>', 'the least level logged').choices(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'))
  .addOption(opt('--operator-uid <uid>', 'uid that may act on everything, as root (repeatable; e.g. SlurmUser)').argParser(intList('uid')))
  .addOption(opt('--allow-uid <uid>', 'uid allowed to act on its own jobs (repeatable; root always may act)').argParser(intList('uid')))
  .addOption(opt('--read-only-gid <gid>', 'gid allowed status/list/stats/events only (repeatable)').argParser(intList('gid')))
  .addOption(opt('--ignore-missing-controllers', 'accept limits whose controller the node lacks (they are skipped and reported)'))
  .addOption(opt('--max-connections <n>', 'concurrent connections (the last 64 only for root and operators)').argParser(intArg('max connections', 65, 100000)).default(1024))
  .addOption(opt('--max-user-connections <n>', 'concurrent connections per non-root, non-operator uid').argParser(intArg('max user connections', 1, 100000)).default(32))
  .addOption(opt('--max-user-jobs <n>', 'live jobs a non-root, non-operator uid may own (its requests that would make more are refused)').argParser(intArg('max user jobs', 1, 1000000)).default(64))
  .addOption(opt('--max-user-steps <n>', 'live steps, in all its jobs, a non-root, non-operator uid may own').argParser(intArg('max user steps', 1, 1000000)).default(1024))
  .addOption(opt('--max-user-tasks <n>', 'live task leaves, in all its steps, a non-root, non-operator uid may own').argParser(intArg('max user tasks', 1, 1000000)).default(4096))
  .addOption(opt('--idle-timeout <ms>', 'close non-root, non-operator connections idle this long (a request line must end within min(this, 10 s))').argParser(intArg('idle timeout', 100, 86400000)).default(60000))
  .addOption(opt('--wait-timeout <ms>', 'how long destroy/freeze wait for the kernel').argParser(intArg('wait timeout', 1, 3600000)).default(10000))
  .addOption(opt('--orphan-interval <ms>', 'how often orphan cgroups are collected').argParser(intArg('orphan interval', 1000, 86400000)).default(60000))
  .addOption(opt('--metrics <[addr:]port>', 'serve Prometheus /metrics: PORT (loopback), ADDR:PORT, [IPV6]:PORT or unix:PATH'))
  .addOption(opt('--metrics-tasks', 'add per-task series to /metrics'))
  .addOption(opt('--metrics-max-age <s>', 'serve scrapes from a snapshot at most this many seconds old').argParser(intArg('metrics max age', 1, 3600)).default(10))
  .addOption(opt('--metrics-max-connections <n>', 'concurrent /metrics connections').argParser(intArg('metrics max connections', 1, 1024)).default(16))
  .addOption(opt('--metrics-token-file <file>', 'require "Authorization: Bearer <the file\'s content>" on /metrics'))
  .addOption(opt('--verify-moves', "read /proc/PID/cgroup back after each move (the kernel's cgroup.procs write already fails if a move fails)"));

program.parse();
const f = program.opts();

// Lines written on the loop at the end of their turn, never waiting on journald (sys/logsink); what a stalled reader left is written at exit.
const sink = new LogSink(1);
process.on('exit', () => sink.flushSync());
const log = pino({ level: f.logLevel, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime }, sink);

/**
 * A fatal start-up error: the JSON log line, and one plain line on stderr for the
 * admin at a terminal or in `journalctl` (what is wrong; for a configuration
 * error, file:line and how to fix it). Exit 2 for configuration errors, else 1.
 */
function fatal(err: unknown): never {
  const e = err as Error & { code?: string };
  const hint = err instanceof ConfigError && err.hint ? `; ${err.hint}` : '';
  log.fatal({ err, code: e.code }, e.message);
  process.stderr.write(`cgstepd: ${e.message}${hint}\n`);
  process.exit(err instanceof ConfigError ? USAGE_EXIT : 1);
}

// Every configuration file and option is checked before anything is touched,
// so a mistake costs no scope, no infinity process and no half-made state.
let conf = defaultCgroupConf();
let confWarnings: string[] = [];
let confUnsupported: string[] = [];
let metricsToken: string | undefined;
try {
  if (f.config) ({ conf, warnings: confWarnings, unsupported: confUnsupported } = loadCgroupConf(f.config));
  const gres = f.gres ? checkGresConf(f.gres) : null;
  if (f.metrics) checkMetricsListen(f.metrics);
  if (f.metricsTokenFile) metricsToken = readToken(f.metricsTokenFile);
  if (f.cgroupRoot) checkCgroupRoot(f.cgroupRoot);
  checkSocketDir(f.socket);
  // Last, so that a mistake elsewhere is said at once, not after the wait. A gres
  // file that is not there cannot be denied, so the agent does not start without it.
  if (gres) await waitForGresFiles(gres.all(), { waitMs: f.gresWait, log });
} catch (err) {
  fatal(err);
}

/** --cgroup-root must be a directory on cgroup2: a wrong path is the admin's to fix (exit 2), said with where the mount is. */
function checkCgroupRoot(dir: string): void {
  try {
    resolveCgroupRoot(dir);
  } catch (err) {
    let where = '';
    try {
      where = ` (here ${findCgroup2Mount().mountPoint})`;
    } catch {
      // no cgroup2 mount at all: the error says so at start
    }
    const msg = (err as Error).message;
    throw new ConfigError(msg.startsWith('--cgroup-root') ? msg : `--cgroup-root ${dir}: ${msg}`, `give a directory under the cgroup2 mount${where} (CGSTEP_CGROUP_ROOT)`);
  }
}

/** The socket's directory must be one only root can change (a symlink, or one others may write, is refused). */
function checkSocketDir(socket: string): void {
  try {
    prepareSocketDir(socket, 'socket directory');
  } catch (err) {
    throw new ConfigError(`--socket ${socket}: ${(err as Error).message}`, 'give a socket path in a directory only root can write, e.g. /run/cgstepd/cgstepd.sock (CGSTEP_SOCKET)');
  }
}

/** --metrics parses; a unix:PATH must sit in a directory only root can change, as the control socket. */
function checkMetricsListen(listen: string): void {
  const where = parseListen(listen);
  if (!('path' in where)) return;
  try {
    prepareSocketDir(where.path, 'metrics socket directory');
  } catch (err) {
    throw new ConfigError(`--metrics ${listen}: ${(err as Error).message}`, 'give a socket path in a directory only root can write, e.g. /run/cgstepd/metrics.sock');
  }
}

/** The bearer token for /metrics, from a file (a token on the command line would show in ps). */
function readToken(file: string): string {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8').trim();
  } catch (err) {
    throw new ConfigError(`--metrics-token-file ${file}: ${(err as NodeJS.ErrnoException).code ?? err}`, 'give a readable file holding the token');
  }
  if (!text || /\s/.test(text)) throw new ConfigError(`--metrics-token-file ${file}: expected one token (no spaces), got ${text ? 'several words' : 'an empty file'}`, 'write the token alone into the file');
  return text;
}

/** Parse gres.conf once up front (the devices backend reads it again for use). */
function checkGresConf(file: string): GresInventory {
  try {
    return loadGresConf(file, f.nodeName ?? os.hostname().split('.')[0]);
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    throw new ConfigError((err as Error).message, "correct gres.conf (syntax as in Slurm's gres.conf(5)) or the path given to --gres (CGSTEP_GRES)");
  }
}

const options: AgentOptions = {
  socket: f.socket,
  socketMode: f.socketMode,
  socketGroup: f.socketGroup,
  cgroupRoot: f.cgroupRoot,
  lockDir: f.lockDir,
  nodeName: f.nodeName,
  slice: f.slice,
  ignoreSystemd: !!f.ignoreSystemd,
  ignoreSystemdOnFailure: !!f.ignoreSystemdOnFailure,
  dbusAddress: f.dbusAddress,
  conf,
  confWarnings,
  confUnsupported,
  configFile: f.config,
  logLevel: f.logLevel,
  operatorUids: f.operatorUid ?? [],
  allowUids: f.allowUid ?? [],
  readOnlyGids: f.readOnlyGid ?? [],
  gresConf: f.gres,
  devicePolicy: f.devicePolicy,
  ignoreMissingControllers: !!f.ignoreMissingControllers,
  maxConnections: f.maxConnections,
  maxUserConnections: f.maxUserConnections,
  maxUserJobs: f.maxUserJobs,
  maxUserSteps: f.maxUserSteps,
  maxUserTasks: f.maxUserTasks,
  idleTimeoutMs: f.idleTimeout,
  waitTimeoutMs: f.waitTimeout,
  orphanIntervalMs: f.orphanInterval,
  metrics: f.metrics,
  metricsTasks: !!f.metricsTasks,
  verifyMoves: !!f.verifyMoves,
  metricsMaxAgeSec: f.metricsMaxAge,
  metricsMaxConnections: f.metricsMaxConnections,
  metricsToken,
};

try {
  // As a Delegate=yes service the agent leaves its unit's own cgroup to systemd.
  try {
    await moveSelfIntoSubgroup(findCgroup2Mount().mountPoint, log);
  } catch (err) {
    log.warn({ err }, 'could not move the agent into a subgroup of its service cgroup');
  }
  const agent = await startAgent(options, log, {
    // dbus-next (about 12 MiB of RSS) is loaded only when systemd is asked for something.
    connectSystemd: async (o, scope) =>
      (await import('../scope/systemd.js')).connectSystemdPort({ address: o.dbusAddress, mountPoint: scope.mountPoint, cgroupRoot: scope.root, slice: scope.slice, scopeName: scope.scopeName, timeoutMs: o.conf.systemdTimeout, log }),
    unitState: async (o, scope) => {
      let m;
      try {
        const { connectSystemd } = await import('../systemd/manager.js');
        m = await connectSystemd({ address: o.dbusAddress, timeoutMs: o.conf.systemdTimeout });
        const st = await m.getUnitState(scope.scopeName);
        log.debug({ unit: scope.scopeName, state: st }, 'scope unit state');
        return st === null ? 'gone' : st.activeState;
      } catch (err) {
        log.debug({ err }, 'cannot ask systemd for the scope unit state');
        return null;
      } finally {
        await m?.close();
      }
    },
  });
  const summary = () => {
    const s = agent.status();
    return `${s.mode} mode, ${s.jobs} job(s), ${s.steps} step(s)${s.degraded.length ? `, degraded: ${s.degraded.join('; ')}` : ''}`;
  };
  sd.ready(summary());
  const statusTimer = setInterval(() => sd.status(summary()), 5000);
  statusTimer.unref();
  const stopWatchdog = sd.startWatchdog((err) => log.warn({ err }, 'watchdog notification failed'));
  let stopping = false;
  const stop = (sig: string) => {
    if (stopping) return;
    stopping = true;
    sd.stopping();
    clearInterval(statusTimer);
    stopWatchdog();
    const t0 = performance.now();
    log.info({ signal: sig }, 'stopping: finishing in-flight requests; steps keep running in the scope');
    // A stop never waits on a stuck request for longer than the unit's patience.
    const limit = setTimeout(() => {
      log.error({ signal: sig, ms: STOP_LIMIT_MS }, 'stopped without finishing: in-flight requests did not end in time');
      process.exit(1);
    }, STOP_LIMIT_MS);
    agent.close().then(
      () => {
        clearTimeout(limit);
        log.info({ signal: sig, stopMs: Math.round(performance.now() - t0) }, 'stopped; steps keep running in the scope');
        process.exit(0);
      },
      (err) => {
        log.error({ err }, 'error while stopping');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
} catch (err) {
  fatal(err);
}
