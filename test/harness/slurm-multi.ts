/**
 * test/harness/slurm-multi: a Slurm 22.05 cluster of several nodes on this one
 * machine, each node a slurmd with its own cgstepd, for tests of what happens
 * across nodes.
 *
 *   const c = await startMultiSlurm({ name: 'x' });      // two nodes
 *   const r = await c.srun(['-N2', '-n4', 'cat', '/proc/self/cgroup']);
 *   await c.stop();
 *
 * One slurmctld (on 127.0.0.1, its own ports) and one munged as in
 * test/harness/slurm.ts; node i is a slurmd on its own loopback address
 * (127.0.0.2, 127.0.0.3, ...; CommunicationParameters=NoInAddrAny, so every
 * slurmd binds the same SlurmdPort on its own address). Each node lives in
 * its own UTS and mount namespace, held open by a sleeping process made with
 * unshare: the node's hostname, an /etc/hosts naming every node, a private
 * tmpfs on /run (so /run/cgstepd/cgstepd.sock, the plugin's socket, is that
 * node's own), and the node's directory bound over the one path slurm.conf
 * names for slurmd's spool, pid and log files. Its cgstepd runs in the same
 * namespaces (--ignore-systemd) with its own cgroup root, a fresh directory
 * under the cgroup2 mount. All traffic stays on loopback addresses and Unix
 * sockets inside these namespaces; the test reaches a node's socket through
 * /proc/<holder>/root.
 *
 * stop() cancels the jobs, stops the daemons, the agents and whatever is left
 * of the cluster (all by pid), removes both cgroup roots, ends the namespace
 * holders (the namespaces and their tmpfs go with them) and the temp dir.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { startAgent, type RunningAgent } from '../helpers/agent.js';
import { MOUNT, makeTestRoot, removeTestRoot } from '../helpers/cgroup.js';
import { which } from '../helpers/which.js';
import {
  buildPluginAsync,
  clusterConfLines,
  clusterEnv,
  endCluster,
  ensureMungeKey,
  freePorts,
  readLog,
  run,
  slurmSupport,
  startDaemon,
  startMunged,
  startSlurmctld,
  waitUntil,
  type Daemon,
  type RunResult,
  type Support,
} from './slurm.js';

const NODE_ADDRS = ['127.0.0.2', '127.0.0.3', '127.0.0.4', '127.0.0.5', '127.0.0.6', '127.0.0.7', '127.0.0.8', '127.0.0.9'];

let supportCache: Support | null = null;

/**
 * Whether a cluster of several nodes can run here: Slurm (slurmSupport, which
 * installs it when missing), unshare and nsenter, the right to make UTS and
 * mount namespaces, and the node addresses on the loopback interface.
 * Synchronous, for the test file's choice between test.serial and skip.
 */
export function multiNodeSupport(): Support {
  supportCache ??= computeSupport();
  return supportCache;
}

function computeSupport(): Support {
  const slurm = slurmSupport();
  if (!slurm.ok) return slurm;
  for (const b of ['unshare', 'nsenter']) if (!which(b)) return { ok: false, reason: `${b} (util-linux) is missing` };
  const ns = spawnSync('unshare', ['--uts', '--mount', '--propagation', 'private', 'true'], { encoding: 'utf8' });
  if (ns.status !== 0) return { ok: false, reason: `cannot make UTS and mount namespaces: ${ns.stderr.trim() || ns.error}` };
  const bind = `const s=require('net').createServer();s.on('error',e=>{console.error(e.message);process.exit(1)});s.listen(0,${JSON.stringify(NODE_ADDRS[1])},()=>s.close())`;
  const lo = spawnSync(process.execPath, ['-e', bind], { encoding: 'utf8' });
  if (lo.status !== 0) return { ok: false, reason: `cannot listen on ${NODE_ADDRS[1]} (loopback): ${lo.stderr.trim()}` };
  return { ok: true };
}

/** The socket every node's plugin and cgstepd use, each inside its own mount namespace. */
export const NODE_SOCKET = '/run/cgstepd/cgstepd.sock';

export interface SlurmNode {
  /** Slurm node name, also the hostname in its UTS namespace. */
  name: string;
  /** Its loopback address (NodeAddr, where its slurmd listens). */
  addr: string;
  /** The process holding the node's namespaces open. */
  holderPid: number;
  /** The node's own directory (spool, pid and log files of its slurmd). */
  dir: string;
  agent: RunningAgent;
  /** The node's cgroup root (its agent's --cgroup-root). */
  root: string;
  /** The root as /proc/PID/cgroup shows it. */
  rootRel: string;
  /** The agent's scope directory (absolute). */
  scope: string;
  /** The scope as /proc/PID/cgroup shows it. */
  scopeRel: string;
  jobDir(job: number | string): string;
  stepDir(job: number | string, step: string): string;
  /** slurmd's log. */
  log(): string;
}

export interface MultiCluster {
  dir: string;
  conf: string;
  /** Environment for Slurm clients (SLURM_CONF set). */
  env: NodeJS.ProcessEnv;
  nodes: SlurmNode[];
  /** Why the agents cannot confine devices (null when they can). */
  devicesUnsupported: string | null;
  startupMs: number;
  srun(args: string[], opts?: { timeoutMs?: number }): Promise<RunResult>;
  scancel(job: number | string): Promise<RunResult>;
  /** slurmctld's log. */
  log(): string;
  stop(): Promise<void>;
}

export interface MultiOptions {
  /** Names the temp dir, the cgroup roots and the nodes (<name>1, <name>2, ...). */
  name: string;
  /** How many nodes (default 2; at most 8). */
  nodes?: number;
  /** CPUs of each node (default 2). */
  cpus?: number;
  /** Extra plugstack.conf options for the plugin. */
  pluginArgs?: string[];
  /** As in test/slurm/helpers: devices=try when the agents cannot confine devices, said loudly. */
  tolerateNoDevices?: boolean;
}

interface Holder {
  proc: ChildProcess;
  exited: Promise<void>;
}

const liveHolders = new Set<ChildProcess>();
const liveAgents = new Set<RunningAgent>();
process.on('exit', () => {
  // Last resort (a crashed test): the nodes' agents and namespace holders still running, by pid.
  for (const a of liveAgents) a.proc.kill('SIGKILL');
  for (const p of liveHolders) p.kill('SIGKILL');
});

/**
 * A process in a new UTS and mount namespace (private propagation) with the
 * node's hostname, /etc/hosts, a tmpfs /run holding an empty /run/cgstepd
 * (0755 root) and nodeDir bound over sharedDir; resolves when that is done.
 */
async function startHolder(hostname: string, hosts: string, nodeDir: string, sharedDir: string): Promise<Holder> {
  const script = [
    'set -e',
    'hostname "$1"',
    'mount -n -t tmpfs -o mode=0755,size=4m cgstep-run /run',
    'mkdir -m 0755 /run/cgstepd',
    'mount -n --bind "$2" /etc/hosts',
    'mount -n --bind "$3" "$4"',
    'echo ready',
    // Bounded, in case this process dies without ending it (the exit hook below is the usual way).
    'exec sleep 3600',
  ].join('\n');
  const proc = spawn('unshare', ['--uts', '--mount', '--propagation', 'private', 'sh', '-c', script, 'holder', hostname, hosts, nodeDir, sharedDir], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  liveHolders.add(proc);
  const exited = new Promise<void>((resolve) => {
    proc.once('exit', () => resolve());
    proc.once('error', () => resolve());
  }).then(() => void liveHolders.delete(proc));
  let out = '';
  proc.stdout!.on('data', (d) => (out += d));
  proc.stderr!.on('data', (d) => (out += d));
  const holder = { proc, exited };
  try {
    await waitUntil(() => out.includes('ready\n'), 10_000, () => `namespaces for ${hostname}: ${out}`);
    if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`namespace holder for ${hostname} exited: ${out}`);
  } catch (err) {
    await endHolder(holder);
    throw err;
  }
  return holder;
}

async function endHolder(h: Holder): Promise<void> {
  if (h.proc.exitCode === null && h.proc.signalCode === null) h.proc.kill('SIGKILL');
  await h.exited;
}

/** nsenter's arguments into a holder's UTS and mount namespaces (it then execs the command in place: same pid). */
const enterArgs = (holderPid: number): string[] => ['-t', String(holderPid), '-u', '-m', '--'];

export async function startMultiSlurm(o: MultiOptions): Promise<MultiCluster> {
  const support = multiNodeSupport();
  if (!support.ok) throw new Error(`a Slurm cluster of several nodes cannot run here: ${support.reason}`);
  const count = o.nodes ?? 2;
  if (count < 1 || count > NODE_ADDRS.length) throw new Error(`nodes: 1..${NODE_ADDRS.length}, got ${count}`);
  ensureMungeKey();
  const t0 = performance.now();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `cgstep-slurm-multi-${o.name}-`));
  fs.chmodSync(dir, 0o755); // munged (as munge) must reach its own subdir
  const conf = path.join(dir, 'slurm.conf');
  const daemons: Daemon[] = [];
  const holders: Holder[] = [];
  const agents: RunningAgent[] = [];
  const roots: string[] = [];
  let stopped = false;

  const stop = async () => {
    if (stopped) return;
    stopped = true;
    await endCluster(conf, daemons);
    for (const a of agents) await a.stop();
    for (const r of roots) await removeTestRoot(r);
    for (const h of holders) await endHolder(h);
    fs.rmSync(dir, { recursive: true, force: true });
  };

  try {
    const munge = await startMunged(dir);
    daemons.push(munge.daemon);

    const specs = NODE_ADDRS.slice(0, count).map((addr, i) => ({ name: `${o.name}${i + 1}`, addr }));
    const hostsFile = path.join(dir, 'hosts');
    fs.writeFileSync(hostsFile, `${fs.readFileSync('/etc/hosts', 'utf8').trimEnd()}\n${specs.map((s) => `${s.addr} ${s.name}`).join('\n')}\n`);
    // One path in slurm.conf; each node's namespace binds its own directory over it.
    const shared = path.join(dir, 'node');
    fs.mkdirSync(shared);

    const plugstack = path.join(dir, 'plugstack.conf');
    const ctldPort = await freePorts(1);
    const slurmdPort = await freeOnAll(specs.map((s) => s.addr), ctldPort);
    const srunBase = await freePorts(40);
    for (const d of ['state', 'log', 'run']) fs.mkdirSync(path.join(dir, d));
    const cpus = o.cpus ?? 2;
    fs.writeFileSync(
      conf,
      [
        `# cgstep ${count}-node test cluster (${o.name}), written by test/harness/slurm-multi.ts`,
        ...clusterConfLines({
          dir,
          ctldPort,
          slurmdPort,
          srunBase,
          mungeSocket: munge.socket,
          plugstack,
          slurmd: { spool: path.join(shared, 'spool'), pidFile: path.join(shared, 'slurmd.pid'), logFile: path.join(shared, 'slurmd.log') },
        }),
        ...specs.map(
          (s) =>
            `NodeName=${s.name} NodeHostname=${s.name} NodeAddr=${s.addr} CPUs=${cpus} Sockets=1 CoresPerSocket=${cpus} ThreadsPerCore=1 RealMemory=1000 State=UNKNOWN`,
        ),
        `PartitionName=${o.name} Nodes=${specs.map((s) => s.name).join(',')} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO`,
        '',
      ].join('\n'),
    );

    const env = clusterEnv(conf);
    const ctld = startSlurmctld(dir, conf, env);
    daemons.push(ctld.daemon);
    const ctldLog = ctld.log;
    // slurmctld, the plugin build and the nodes at once: each is seconds of mostly waiting on other processes.
    const made = { holders, agents, roots };
    const settled = await Promise.allSettled([
      buildPluginAsync(path.join(dir, 'plugin')),
      ctld.up,
      ...specs.map((s) => startNode(s, path.join(dir, 'nodes', s.name), hostsFile, shared, made)),
    ]);
    const failed = settled.find((x) => x.status === 'rejected');
    if (failed) throw (failed as PromiseRejectedResult).reason;
    const plugin = (settled[0] as PromiseFulfilledResult<string>).value;
    const nodes = settled.slice(2).map((x) => (x as PromiseFulfilledResult<SlurmNode>).value);
    const status0 = await agentStatus(agents[0]);
    const devicesUnsupported = status0.devices?.supported ? null : (status0.devices?.reason ?? 'unknown reason');

    const pluginArgs = [`socket=${NODE_SOCKET}`, ...(o.pluginArgs ?? [])];
    if (devicesUnsupported && o.tolerateNoDevices) {
      console.error(`\n*** cgstepd has no device control here (${devicesUnsupported}): the plugin runs with devices=try on the ${count} nodes of ${o.name} ***\n`);
      pluginArgs.push('devices=try');
    }
    fs.writeFileSync(plugstack, `required ${plugin} ${pluginArgs.join(' ')}\n`);

    for (const n of nodes) {
      const d = startDaemon('slurmd', 'nsenter', [...enterArgs(n.holderPid), 'slurmd', '-D', '-N', n.name, '-f', conf], env, path.join(n.dir, 'slurmd.out'));
      daemons.push(d);
    }
    await waitUntil(
      async () => {
        const r = await run('sinfo', ['-h', '-N', '-o', '%N %T'], { env, timeoutMs: 10_000 });
        return nodes.every((n) => new RegExp(`^${n.name} idle$`, 'm').test(r.stdout));
      },
      30_000,
      () => `the slurmds did not become idle:\n${nodes.map((n) => `--- ${n.name}\n${n.log()}`).join('\n')}\n--- slurmctld\n${ctldLog()}`,
    );

    return {
      dir,
      conf,
      env,
      nodes,
      devicesUnsupported,
      startupMs: Math.round(performance.now() - t0),
      srun: (args, ro = {}) => run('srun', args, { env, timeoutMs: ro.timeoutMs ?? 60_000, cwd: dir }),
      scancel: (job) => run('scancel', [String(job)], { env, timeoutMs: 30_000 }),
      log: ctldLog,
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}

/** A node's namespaces, cgroup root and cgstepd; what it makes goes into made at once, for stop(). */
async function startNode(
  s: { name: string; addr: string },
  nodeDir: string,
  hostsFile: string,
  shared: string,
  made: { holders: Holder[]; agents: RunningAgent[]; roots: string[] },
): Promise<SlurmNode> {
  fs.mkdirSync(path.join(nodeDir, 'spool'), { recursive: true });
  const holder = await startHolder(s.name, hostsFile, nodeDir, shared);
  made.holders.push(holder);
  const holderPid = holder.proc.pid!;
  const root = makeTestRoot(`multi-${s.name}`);
  made.roots.push(root);
  const agent = await startAgent({
    root,
    socket: NODE_SOCKET,
    reachAt: `/proc/${holderPid}/root${NODE_SOCKET}`,
    launcher: ['nsenter', ...enterArgs(holderPid)],
    args: ['--ignore-systemd', '--node-name', s.name, '--ignore-missing-controllers'],
  });
  made.agents.push(agent);
  liveAgents.add(agent);
  agent.proc.once('exit', () => liveAgents.delete(agent));
  const { scope } = await agentStatus(agent);
  return {
    ...s,
    holderPid,
    dir: nodeDir,
    agent,
    root,
    rootRel: `/${path.relative(MOUNT, root)}`,
    scope,
    scopeRel: `/${path.relative(MOUNT, scope)}`,
    jobDir: (job) => path.join(scope, `job_${job}`),
    stepDir: (job, step) => path.join(scope, `job_${job}`, `step_${step}`),
    log: () => readLog(path.join(nodeDir, 'slurmd.log')) + readLog(path.join(nodeDir, 'slurmd.out')),
  };
}

async function agentStatus(agent: RunningAgent): Promise<{ scope: string; devices?: { supported: boolean; reason?: string } }> {
  const c = await agent.client();
  try {
    return (await c.request('status', {})) as { scope: string; devices?: { supported: boolean; reason?: string } };
  } finally {
    c.close();
  }
}

/** A TCP port free now on every one of addrs (and not avoid). */
async function freeOnAll(addrs: string[], avoid: number): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = await freePorts(1, addrs[0]);
    if (port === avoid) continue;
    const free = await Promise.all(addrs.slice(1).map((a) => portFree(a, port)));
    if (free.every(Boolean)) return port;
  }
  throw new Error(`no port free on all of ${addrs.join(' ')}`);
}

function portFree(addr: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, addr, () => s.close(() => resolve(true)));
  });
}
