/**
 * agent: wires the layers together and answers requests. Start-up order:
 * cgroup root, node scope (systemd or mkdir), device control, the step tree
 * (recovered from disk), then the socket; READY=1 only after all of that.
 * Owns no kernel or socket code itself: every op is delegated to a layer.
 */
import os from 'node:os';
import type { Logger } from 'pino';
import { resolveCgroupRoot } from './cgroupfs/index.js';
import { scopeNameFor, type AgentOptions } from './config/options.js';
import { AgentError } from './errors.js';
// Not rpc/index.js: that loads the schema library, which rpc/validate loads only when needed.
import { RpcServer } from './rpc/server.js';
import { PROTOCOL_VERSION } from './rpc/version.js';
import type { Request } from './rpc/protocol.js';
import { Registry } from './backends/registry.js';
import { noneDevices } from './devices/none.js';
import type { DeviceBackend } from './devices/backend-types.js';
import { ebpfDevices, type EbpfContext } from './devices/backend.js';
import { DeviceController } from './devices/controller.js';
import { repairScope, scopeHealthy, type ScopeOptions, type SystemdPort } from './scope/lifecycle.js';
import { mkdirScope, systemdScope, type ScopeBackend, type ScopeContext } from './scope/backends.js';
import { cgroupAccounting, type AccountingBackend } from './steps/accounting.js';
import { StepTree, collectOrphans, type Leaf, type OrphanReport } from './steps/index.js';
import type { Metrics } from './metrics/index.js';
import { controllersOf } from './cgroupfs/index.js';

export const AGENT_VERSION = '0.1.0';

export interface Agent {
  scope: ScopeBackend['state'];
  tree: StepTree;
  server: RpcServer;
  status(): Record<string, unknown>;
  close(): Promise<void>;
}

export interface AgentHooks {
  /** systemd for scope/systemd; absent means this build cannot talk to systemd. */
  connectSystemd?: (o: AgentOptions, scope: ScopeOptions, log: Logger) => Promise<SystemdPort>;
  /** The scope unit's ActiveState for systemd mode's guard ('gone' when not loaded); null when systemd cannot be asked. */
  unitState?: (o: AgentOptions, scope: ScopeOptions) => Promise<string | null>;
  /** Device backends tried before devices/none; default devices/ebpf on `deviceController`. */
  deviceBackends?: typeof noneDevices[];
  /** Why BPF device control cannot be used (null: it can); default: the controller's probe. */
  bpfUnavailable?: () => string | null;
  /** The controller devices/ebpf uses; one is made when absent. */
  deviceController?: DeviceController;
}

type Context = ScopeContext & EbpfContext;

/** The built-in backends, in the order they are tried within each kind. */
export function builtinRegistry(hooks: AgentHooks, ctl?: DeviceController): Registry<Context> {
  const r = new Registry<Context>();
  r.register('scope', systemdScope);
  r.register('scope', mkdirScope);
  for (const d of hooks.deviceBackends ?? (ctl ? [ebpfDevices(ctl)] : [])) r.register('devices', d);
  r.register('devices', noneDevices);
  r.register('accounting', cgroupAccounting);
  return r;
}

export async function startAgent(o: AgentOptions, log: Logger, hooks: AgentHooks = {}): Promise<Agent> {
  const t0 = performance.now();
  for (const w of o.confWarnings) log.warn(w);
  const root = resolveCgroupRoot(o.cgroupRoot ?? o.conf.cgroupMountPoint);
  if (root.readOnly) throw new AgentError('EPERM', `the cgroup2 filesystem at ${root.mountPoint} is mounted read-only`);

  const ignoreSystemd = o.ignoreSystemd || o.conf.ignoreSystemd;
  const scopeOpts: ScopeOptions = {
    root: root.root,
    mountPoint: root.mountPoint,
    slice: o.slice,
    scopeName: scopeNameFor(o.nodeName),
    ignoreSystemd,
    ignoreSystemdOnFailure: o.ignoreSystemdOnFailure || o.conf.ignoreSystemdOnFailure,
    enableControllers: o.conf.enableControllers,
    log,
    connectSystemd: () => {
      if (!hooks.connectSystemd) throw new AgentError('ENOTSUP', 'this build of cgstepd has no systemd support; pass --ignore-systemd');
      return hooks.connectSystemd(o, scopeOpts, log);
    },
    unitState: hooks.unitState ? () => hooks.unitState!(o, scopeOpts) : undefined,
  };
  const ctl = hooks.deviceController ?? new DeviceController(log);
  const registry = builtinRegistry(hooks, ctl);
  await registry.start(
    {
      scope: scopeOpts,
      busGiven: !!(o.dbusAddress || process.env.DBUS_SYSTEM_BUS_ADDRESS),
      constrainDevices: o.conf.constrainDevices,
      devicesRequired: o.conf.constrainDevices && o.conf.explicit.has('constraindevices'),
      bpfUnavailable:
        hooks.bpfUnavailable ??
        (() => {
          const p = ctl.probe();
          return p.supported ? null : (p.reason ?? 'BPF device programs are not supported');
        }),
      gresConf: o.gresConf,
      nodeName: o.nodeName,
      devicePolicy: o.devicePolicy,
      log,
    },
    log,
  );
  const scopeBackend = registry.get<ScopeBackend>('scope');
  let scope = scopeBackend.state;
  const devices = registry.get<DeviceBackend>('devices');
  const accounting = registry.get<AccountingBackend>('accounting');
  const fallback = registry.active().find((b) => b.fellBackFrom);
  if (fallback) scope.fallbackReason = fallback.fellBackFrom;
  log.info({ scope: scope.path, mode: scope.mode, infinityPid: scope.infinityPid, controllers: scope.controllers.enabled, adopted: scope.adopted }, 'scope ready');

  const tree = new StepTree({
    scopeDir: scope.path,
    mountPoint: root.mountPoint,
    conf: o.conf,
    totalRam: os.totalmem(),
    ignoreMissingControllers: o.ignoreMissingControllers,
    waitTimeoutMs: o.waitTimeoutMs,
    log,
    protectedPids: () => [1, process.pid, scope.infinityPid],
    devices,
    accounting,
    scopeControllers: () => scope.controllers.enabled,
    verifyMoves: o.verifyMoves,
  });
  const recovered = tree.recover();
  if (recovered.jobs) log.info(recovered, 'adopted jobs and steps from the tree');

  // Orphans: right after start (once the socket answers: a sweep walks the
  // whole tree again, which would double the time to ready), then on a timer.
  let lastOrphans: OrphanReport & { at?: string } = { removed: [], populated: [], extraInfinity: [] };
  const sweep = async () => {
    try {
      lastOrphans = { ...(await collectOrphans(scope.path, scope.infinityPid, o.waitTimeoutMs)), at: new Date().toISOString() };
      const { removed, populated, extraInfinity } = lastOrphans;
      if (removed.length || extraInfinity.length) log.warn({ removed, extraInfinity }, 'orphans cleaned up');
      if (populated.length) log.warn({ populated }, 'orphan directories with processes (not killed; destroy them or move the processes)');
    } catch (err) {
      log.error({ err }, 'orphan collection failed');
    }
  };
  const sweeper = setInterval(() => void sweep(), o.orphanIntervalMs);
  sweeper.unref();

  // The infinity process keeps the scope alive: replace it if it dies. If the
  // scope itself went away (its last process died, or someone stopped the unit),
  // make it again through the same backend; the steps in it are gone with it.
  let guarding = false;
  const guardOnce = async () => {
    if (guarding) return;
    guarding = true;
    try {
      const r = await repairScope(scopeOpts, scope, async () => {
        log.error({ scope: scope.path, mode: scope.mode }, 'the scope directory is gone (unit stopped or emptied behind the agent); creating it again');
        await scopeBackend.init();
        return scopeBackend.state;
      });
      scope = r.state;
      if (r.action !== 'ok') log.info({ action: r.action, scope: scope.path, infinityPid: scope.infinityPid }, 'scope guard acted');
      if (r.action === 'recreated') {
        await tree.rescan();
        log.info({ scope: scope.path, infinityPid: scope.infinityPid }, 'scope re-created');
      }
    } catch (err) {
      log.error({ err }, 'cannot restore the scope or its infinity process');
    } finally {
      guarding = false;
    }
  };
  const guard = setInterval(() => void guardOnce(), 1000);
  guard.unref();

  const started = Date.now();
  let metrics: Metrics | null = null;
  const server = new RpcServer({
    observe: (op, sec, code) => metrics?.observe(op, sec, code),
    socketPath: o.socket,
    socketMode: o.socketMode,
    socketGroup: o.socketGroup,
    operatorUids: o.operatorUids,
    allowUids: o.allowUids,
    readOnlyGids: o.readOnlyGids,
    maxConnections: o.maxConnections,
    log,
    handle: (req) => dispatch(req),
    subscribe: (send) => {
      tree.watcher.on('event', send);
      return () => tree.watcher.off('event', send);
    },
  });

  const status = () => ({
    version: AGENT_VERSION,
    protocol: PROTOCOL_VERSION,
    pid: process.pid,
    uptimeSec: Math.round((Date.now() - started) / 1000),
    socket: o.socket,
    scope: scope.path,
    mode: scope.mode,
    adopted: scope.adopted,
    infinityPid: scope.infinityPid,
    controllers: scope.controllers,
    devices: devices.support,
    backends: registry.active(),
    jobs: tree.jobCount,
    steps: tree.stepCount,
    connections: server.connectionCount,
    requests: server.counters,
    ...(scope.fallbackReason ? { fallbackReason: scope.fallbackReason } : {}),
    orphans: { removed: lastOrphans.removed.length, populated: lastOrphans.populated.map((p) => p.path), at: lastOrphans.at },
    layout: { checkedAt: tree.layout.report.at, levels: tree.layout.report.levels, repaired: tree.layout.report.repaired.length, failed: tree.layout.report.failed.length },
    degraded: degraded(),
  });

  /** What does not work as configured right now, in words an admin can act on. */
  function degraded(): string[] {
    const out: string[] = [];
    if (!scopeHealthy(scope.path)) out.push(`scope directory ${scope.path} is gone`);
    if (scope.fallbackReason) out.push(`systemd unavailable, running in mkdir mode: ${scope.fallbackReason}`);
    if (scope.unitLost) out.push(scope.unitLost);
    try {
      const now = controllersOf(scope.path);
      const lost = scope.controllers.enabled.filter((c) => !now.includes(c));
      if (lost.length) out.push(`controllers disappeared from the scope: ${lost.join(' ')}`);
    } catch (err) {
      out.push(`cannot read the scope's controllers: ${(err as Error).message}`);
    }
    if (o.conf.constrainDevices && !devices.support.supported) out.push(`device control unavailable (devices/none): ${devices.support.reason}`);
    if (lastOrphans.populated.length) out.push(`${lastOrphans.populated.length} orphan cgroup(s) still hold processes`);
    const layout = tree.layoutProblems();
    if (layout.length) out.push(...layout.slice(0, 20), ...(layout.length > 20 ? [`(+${layout.length - 20} more directories not repaired)`] : []));
    return out;
  }

  async function dispatch(req: Request): Promise<unknown> {
    switch (req.op) {
      case 'hello':
        return { protocol: PROTOCOL_VERSION, version: AGENT_VERSION };
      case 'status':
        return status();
      case 'list':
        return { jobs: tree.list() };
      case 'job.create':
        return tree.createJob(req.job, req.limits, req.devices);
      case 'step.create':
        return tree.createStep(req.job, req.step, req.limits, req.devices);
      case 'attach':
        return tree.attach(req.job, req.step, req.pid, leafOf(req), req.devices);
      case 'task.place':
        return tree.place({ ...req, leaf: leafOf(req) });
      case 'devices.set':
        return tree.setDevices(req.job, req.step, req.task, req.devices);
      case 'stats':
        return tree.stats(req.job, req.step);
      case 'signal':
        return tree.signal(req.job, req.step, req.signal);
      case 'freeze':
        return tree.freeze(req.job, req.step, true);
      case 'thaw':
        return tree.freeze(req.job, req.step, false);
      case 'destroy':
        return tree.destroy(req.job, req.step, req.force ?? false, req.reapJob ?? false);
      case 'events':
        throw new AgentError('EINVAL', 'events is handled by the server');
    }
  }

  function leafOf(req: { task?: number; leaf?: 'slurm' | 'special' }): Leaf {
    if (req.task !== undefined && req.leaf !== undefined) throw new AgentError('EINVAL', 'give either task or leaf, not both');
    return req.leaf ?? { task: req.task ?? 0 };
  }

  if (o.metrics) {
    // Loaded only when asked for: prom-client costs about 12 MiB of RSS.
    const { Metrics } = await import('./metrics/index.js');
    metrics = new Metrics({ listen: o.metrics, node: o.nodeName ?? os.hostname(), perTask: o.metricsTasks, tree, log, agentGauges: () => ({ connections: server.connectionCount }) });
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
  void sweep();

  return {
    scope,
    tree,
    server,
    status,
    async close() {
      clearInterval(guard);
      clearInterval(sweeper);
      await server.close();
      await metrics?.close();
      const closed = tree.close();
      await watched;
      await closed;
      await registry.stop(log);
    },
  };
}
