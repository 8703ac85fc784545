/**
 * agent: wires the layers together. Start-up order: cgroup root, node scope
 * (systemd or mkdir), device control, the step tree (recovered from disk),
 * then the socket; READY=1 only after all of that. Owns no kernel or socket
 * code itself: the scope guard (src/scope), the orphan sweeper and the tree
 * (src/steps), the server (src/rpc) and the dispatcher each do their part.
 */
import fs from 'node:fs';
import os from 'node:os';
import type { Logger } from 'pino';
import { Registry } from './backends/registry.js';
import { controllersOf, inotify, isDir, lockCgroupRoot, resolveCgroupRoot } from './cgroupfs/index.js';
import { scopeNameFor, type AgentOptions } from './config/options.js';
import { configReport, logConfiguration, type GresFile } from './config/report.js';
import { loadGresConf } from './devices/gres.js';
import type { DeviceBackend } from './devices/backend-types.js';
import { ebpfDevices, type EbpfContext } from './devices/backend.js';
import { DeviceController } from './devices/controller.js';
import { noneDevices } from './devices/none.js';
import { makeDispatch, type Dispatch } from './dispatch.js';
import { AgentError } from './errors.js';
import { Gate } from './gate.js';
import type { Metrics } from './metrics/index.js';
// Not rpc/index.js: that loads the schema library, which rpc/validate loads only when needed.
import { maySee } from './rpc/authz.js';
import type { AgentEvent } from './rpc/protocol.js';
import { RpcServer, type ServerOptions } from './rpc/server.js';
import { PROTOCOL_VERSION } from './rpc/version.js';
import { mkdirScope, systemdScope, type ScopeBackend, type ScopeContext } from './scope/backends.js';
import { ScopeGuard } from './scope/guard.js';
import type { ScopeOptions, SystemdPort } from './scope/lifecycle.js';
import { statusOf, type AgentStatus, type StatusFacts } from './status.js';
import { cgroupAccounting, type AccountingBackend } from './steps/accounting.js';
import { DEFAULT_USER_CAPS, OrphanSweeper, StepTree, type UserCaps } from './steps/index.js';

import { AGENT_VERSION } from './rpc/version.js';

export { AGENT_VERSION };

export interface Agent {
  tree: StepTree;
  server: RpcServer;
  status(): AgentStatus;
  close(): Promise<void>;
}

export interface AgentHooks {
  /** systemd for scope/systemd; absent means this build cannot talk to systemd. */
  connectSystemd?: (o: AgentOptions, scope: ScopeOptions, log: Logger) => Promise<SystemdPort>;
  /** The scope unit's ActiveState for systemd mode's guard ('gone' when not loaded); null when systemd cannot be asked. */
  unitState?: (o: AgentOptions, scope: ScopeOptions) => Promise<string | null>;
}

type Context = ScopeContext & EbpfContext;

/** The built-in backends, in the order they are tried within each kind. */
export function builtinRegistry(ctl: DeviceController): Registry<Context> {
  const r = new Registry<Context>();
  r.register('scope', systemdScope);
  r.register('scope', mkdirScope);
  r.register('devices', ebpfDevices(ctl));
  r.register('devices', noneDevices);
  r.register('accounting', cgroupAccounting);
  return r;
}

/**
 * Start the agent holding the lock on its cgroup root, taken before anything
 * under the root is touched; the lock ends with close() or the process.
 */
export async function startAgent(o: AgentOptions, log: Logger, hooks: AgentHooks = {}): Promise<Agent> {
  for (const w of o.confWarnings) log.warn(w);
  const root = resolveCgroupRoot(o.cgroupRoot ?? o.conf.cgroupMountPoint);
  const lock = lockCgroupRoot(root.root, scopeNameFor(o.nodeName), o.lockDir);
  try {
    const agent = await startLocked(o, root, log, hooks);
    const close = agent.close;
    agent.close = () => close().finally(() => lock.release());
    return agent;
  } catch (err) {
    lock.release();
    throw err;
  }
}

async function startLocked(o: AgentOptions, root: ReturnType<typeof resolveCgroupRoot>, log: Logger, hooks: AgentHooks): Promise<Agent> {
  const t0 = performance.now();
  if (root.readOnly) throw new AgentError('EPERM', `the cgroup2 filesystem at ${root.mountPoint} is mounted read-only`);
  // Events (empty, OOM) come through the addon's inotify: without it the agent would run deaf, so it does not start.
  inotify().open();
  const scopeOpts = scopeOptionsOf(o, root, log, hooks);
  // Steps with the same policy share one loaded program (the verifier's pass is most of a policy's cost).
  const ctl = new DeviceController(log, { shareLoaded: 32 });
  const registry = builtinRegistry(ctl);
  await registry.start(backendContext(o, scopeOpts, ctl, log), log);
  const scopeBackend = registry.get<ScopeBackend>('scope');
  const devices = registry.get<DeviceBackend>('devices');
  const fallback = registry.active().find((b) => b.fellBackFrom);
  if (fallback) scopeBackend.state.fallbackReason = fallback.fellBackFrom;
  const guard = new ScopeGuard(scopeOpts, scopeBackend, log);
  const s0 = guard.state;
  log.info({ scope: s0.path, mode: s0.mode, infinityPid: s0.infinityPid, controllers: s0.controllers.enabled, adopted: s0.adopted }, 'scope ready');
  const gresFiles = gresFilesOf(o);
  const config = () =>
    configReport({
      configFile: o.configFile, gresConf: o.gresConf, conf: o.conf, unsupportedKeys: o.confUnsupported ?? [], ignoreMissingControllers: o.ignoreMissingControllers,
      devicePolicy: o.devicePolicy, available: guard.state.controllers.available, gresFiles, exists: (f) => fs.existsSync(f), userCaps: userCapsOf(o),
    });
  logConfiguration(config(), log);

  const tree = makeTree(o, root.mountPoint, guard, registry, log);
  const recovered = tree.recover();
  if (recovered.jobs) log.info(recovered, 'adopted jobs and steps from the tree');
  guard.on('recreated', (s) => void tree.rescan().then(() => log.info({ scope: s.path, infinityPid: s.infinityPid }, 'scope re-created')));
  guard.start();
  const sweeper = new OrphanSweeper(() => guard.state, o.waitTimeoutMs, log);
  sweeper.start(o.orphanIntervalMs);

  const started = Date.now();
  let metrics: Metrics | null = null;
  const status = (): AgentStatus => statusOf({ ...statusFacts({ o, started, guard, registry, devices, tree, server, sweeper }), config: config() });
  const gate = new Gate({
    mountPoint: root.mountPoint,
    scopeDir: () => guard.state.path,
    protectedPids: () => ({ agent: process.pid, infinity: guard.state.infinityPid }),
  });
  const server = makeServer(o, log, tree, makeDispatch({ version: AGENT_VERSION, tree, status, gate }), (op, sec, code) => metrics?.observe(op, sec, code));

  if (o.metrics) {
    // Loaded only when asked for (an HTTP server and the snapshot machinery).
    const { Metrics } = await import('./metrics/index.js');
    metrics = new Metrics({
      listen: o.metrics,
      node: o.nodeName ?? os.hostname(),
      perTask: o.metricsTasks,
      tree,
      log,
      ownerOf: (job) => tree.ownerOf(job),
      agentGauges: () => ({ connections: server.connectionCount }),
      maxAgeSec: o.metricsMaxAgeSec ?? 10,
      maxConnections: o.metricsMaxConnections ?? 16,
      token: o.metricsToken,
      socketGroup: o.socketGroup,
    });
    await metrics.listen();
  }
  await server.listen();
  log.info({ socket: o.socket, startupMs: Math.round(performance.now() - t0) }, 'cgstepd ready');
  // After the first answer: the watches, the layout check and the orphan sweep walk the whole tree.
  const watched = tree.watchAdopted().then(
    (r) => {
      if (recovered.jobs) log.info({ ...recovered, tasks: r.tasks, levelsChecked: r.layout.levels }, 'watching the adopted jobs, steps and tasks');
    },
    (err) => log.error({ err }, 'could not watch the adopted jobs, steps and tasks'),
  );
  void sweeper.sweep();
  const counted = tree.countOwners().catch((err) => log.error({ err }, "could not read the adopted jobs' owners: user requests that make jobs or steps are refused (EBUSY)"));

  return {
    tree,
    server,
    status,
    async close() {
      guard.stop();
      sweeper.stop();
      await server.close();
      await metrics?.close();
      const closed = tree.close();
      await watched;
      await counted;
      await closed;
      await registry.stop(log);
      ctl.close();
    },
  };
}

function makeTree(o: AgentOptions, mountPoint: string, guard: ScopeGuard, registry: Registry<Context>, log: Logger): StepTree {
  return new StepTree({
    scopeDir: guard.state.path,
    mountPoint,
    conf: o.conf,
    totalRam: os.totalmem(),
    ignoreMissingControllers: o.ignoreMissingControllers,
    waitTimeoutMs: o.waitTimeoutMs,
    log,
    protectedPids: () => [1, process.pid, guard.state.infinityPid],
    devices: registry.get<DeviceBackend>('devices'),
    accounting: registry.get<AccountingBackend>('accounting'),
    scopeControllers: () => guard.state.controllers.enabled,
    verifyMoves: o.verifyMoves,
    userCaps: userCapsOf(o),
  });
}

function userCapsOf(o: AgentOptions): UserCaps {
  return { jobs: o.maxUserJobs ?? DEFAULT_USER_CAPS.jobs, steps: o.maxUserSteps ?? DEFAULT_USER_CAPS.steps, tasks: o.maxUserTasks ?? DEFAULT_USER_CAPS.tasks };
}

function makeServer(o: AgentOptions, log: Logger, tree: StepTree, handle: Dispatch, observe: ServerOptions['observe']): RpcServer {
  return new RpcServer({
    observe,
    socketPath: o.socket,
    socketMode: o.socketMode,
    socketGroup: o.socketGroup,
    operatorUids: o.operatorUids,
    allowUids: o.allowUids,
    readOnlyGids: o.readOnlyGids,
    maxConnections: o.maxConnections,
    maxUserConnections: o.maxUserConnections,
    idleTimeoutMs: o.idleTimeoutMs,
    log,
    handle,
    subscribe: (send, peer) => {
      // A user hears about its own jobs only.
      const listener = peer.role === 'user' ? (e: AgentEvent) => void (maySee(peer, tree.knownOwnerOf(e.job)) && send(e)) : send;
      tree.watcher.on('event', listener);
      return () => tree.watcher.off('event', listener);
    },
  });
}

interface StatusSources {
  o: AgentOptions;
  started: number;
  guard: ScopeGuard;
  registry: Registry<Context>;
  devices: DeviceBackend;
  tree: StepTree;
  server: RpcServer;
  sweeper: OrphanSweeper;
}

/** What statusOf needs, read now (the only I/O: the scope's directory and controllers). */
function statusFacts(x: StatusSources): StatusFacts {
  const scope = x.guard.state;
  let now: string[] | Error;
  try {
    now = controllersOf(scope.path);
  } catch (err) {
    now = err as Error;
  }
  return {
    version: AGENT_VERSION, protocol: PROTOCOL_VERSION, pid: process.pid, startedAt: x.started, now: Date.now(), socket: x.o.socket,
    scope, scopeExists: isDir(scope.path), scopeControllersNow: now, constrainDevices: x.o.conf.constrainDevices,
    devices: x.devices.support, backends: x.registry.active(), jobs: x.tree.jobCount, steps: x.tree.stepCount,
    connections: x.server.connectionCount, requests: x.server.counters, orphans: x.sweeper.lastReport,
    layout: x.tree.layout.report, layoutProblems: x.tree.layoutProblems(),
  };
}

function scopeOptionsOf(o: AgentOptions, root: { root: string; mountPoint: string }, log: Logger, hooks: AgentHooks): ScopeOptions {
  const scopeOpts: ScopeOptions = {
    root: root.root,
    mountPoint: root.mountPoint,
    slice: o.slice,
    scopeName: scopeNameFor(o.nodeName),
    ignoreSystemd: o.ignoreSystemd || o.conf.ignoreSystemd,
    ignoreSystemdOnFailure: o.ignoreSystemdOnFailure || o.conf.ignoreSystemdOnFailure,
    enableControllers: o.conf.enableControllers,
    log,
    connectSystemd: () => {
      if (!hooks.connectSystemd) throw new AgentError('ENOTSUP', 'this build of cgstepd has no systemd support; pass --ignore-systemd');
      return hooks.connectSystemd(o, scopeOpts, log);
    },
    unitState: hooks.unitState ? () => hooks.unitState!(o, scopeOpts) : undefined,
  };
  return scopeOpts;
}

/** Every gres device file of this node, in gres.conf order (checked before start-up, so it parses). */
function gresFilesOf(o: AgentOptions): GresFile[] {
  if (!o.gresConf) return [];
  const inv = loadGresConf(o.gresConf, o.nodeName ?? os.hostname().split('.')[0]);
  return inv.names().flatMap((name) => inv.units(name).flatMap((u) => u.files.map((file) => ({ name, index: u.index, file }))));
}

function backendContext(o: AgentOptions, scope: ScopeOptions, ctl: DeviceController, log: Logger): Context {
  return {
    scope,
    busGiven: !!(o.dbusAddress || process.env.DBUS_SYSTEM_BUS_ADDRESS),
    constrainDevices: o.conf.constrainDevices,
    devicesRequired: o.conf.constrainDevices && o.conf.explicit.has('constraindevices'),
    bpfUnavailable: () => {
      const p = ctl.probe();
      return p.supported ? null : (p.reason ?? 'BPF device programs are not supported');
    },
    gresConf: o.gresConf,
    nodeName: o.nodeName,
    devicePolicy: o.devicePolicy,
    log,
  };
}
