/**
 * test/slurm/helpers: one Slurm node (test/harness/slurm.ts) driven through
 * the cgstep SPANK plugin into a real cgstepd on its own socket and its own
 * fresh cgroup dir under the cgroup2 mount. stop() ends the cluster, then the
 * agent (by pid), then removes the cgroup dir (cgroup.kill first) and the
 * socket dir. Also the
 * shared suite header (slurmGate, nodeSuite) and a scripted line server that
 * stands in for cgstepd.
 */
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { slurmSupport, startSlurm, type SlurmCluster } from '../harness/slurm.js';
import { startAgent, tmpSocket, type RunningAgent } from '../helpers/agent.js';
import { gate, type GatedTest } from '../helpers/gate.js';
import { MOUNT, makeTestRoot, removeTestRoot } from '../helpers/cgroup.js';

const here = path.dirname(fileURLToPath(import.meta.url));
export const PROBE = path.join(here, 'probe.py');
export const PYTHON = fs.existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';

export interface Node {
  cluster: SlurmCluster;
  agent: RunningAgent;
  socket: string;
  /** The test's cgroup dir (the agent's --cgroup-root). */
  root: string;
  /** The agent's scope directory (absolute). */
  scope: string;
  /** The scope as /proc/PID/cgroup shows it ("/cgstep-test-.../system.slice/node1_slurmstepd.scope"). */
  scopeRel: string;
  /** Why the agent cannot confine devices (null when it can). */
  devicesUnsupported: string | null;
  agentArgs: string[];
  jobDir(job: number | string): string;
  stepDir(job: number | string, step: string): string;
  stopAgent(): Promise<void>;
  startAgent(): Promise<void>;
  /** Start the agent unless it is running (and SIGCONT it, in case a test stopped it). */
  ensureAgent(): Promise<void>;
  stop(): Promise<void>;
}

export interface NodeOptions {
  name: string;
  /** Extra plugstack.conf options. */
  pluginArgs?: string[];
  /**
   * When the agent cannot confine devices (devices/none), run the plugin with
   * devices=try so that tests about placement still run; said loudly. Device
   * tests leave this off and fail instead.
   */
  tolerateNoDevices?: boolean;
  /** Extra slurm.conf lines. */
  extraConf?: string[];
}

export async function startNode(o: NodeOptions): Promise<Node> {
  const root = makeTestRoot(`slurm-${o.name}`);
  const socket = tmpSocket(`slurm-${o.name}`);
  const socketDir = path.dirname(socket);
  let cluster: SlurmCluster | null = null;
  let agent: RunningAgent | null = null;
  const cleanup = async () => {
    await cluster?.stop();
    if (agent && agent.proc.exitCode === null && agent.proc.signalCode === null) process.kill(agent.pid, 'SIGCONT');
    await agent?.stop();
    await removeTestRoot(root);
    fs.rmSync(socketDir, { recursive: true, force: true });
  };
  try {
    cluster = await startSlurm({ name: o.name, socket, pluginArgs: o.pluginArgs, extraConf: o.extraConf });
    const agentArgs = ['--ignore-systemd', '--node-name', 'node1', '--gres', cluster.gresConf, '--ignore-missing-controllers'];
    agent = await startAgent({ root, socket, args: agentArgs });
    const c = await agent.client();
    let status: { scope: string; devices: { supported: boolean; reason?: string } };
    try {
      status = (await c.request('status', {})) as typeof status;
    } finally {
      c.close();
    }
    const devicesUnsupported = status.devices?.supported ? null : (status.devices?.reason ?? 'unknown reason');
    if (devicesUnsupported && o.tolerateNoDevices) {
      console.error(`\n*** cgstepd has no device control here (${devicesUnsupported}): the plugin runs with devices=try for the placement tests in ${o.name} ***\n`);
      cluster.setPluginArgs([...(o.pluginArgs ?? []), 'devices=try']);
    }
    const scope = status.scope;
    const node: Node = {
      cluster,
      agent,
      socket,
      root,
      scope,
      scopeRel: `/${path.relative(MOUNT, scope)}`,
      devicesUnsupported,
      agentArgs,
      jobDir: (job) => path.join(scope, `job_${job}`),
      stepDir: (job, step) => path.join(scope, `job_${job}`, `step_${step}`),
      stopAgent: async () => {
        await node.agent.stop();
      },
      startAgent: async () => {
        node.agent = agent = await startAgent({ root, socket, args: agentArgs });
      },
      ensureAgent: async () => {
        const p = node.agent.proc;
        if (p.exitCode === null && p.signalCode === null) {
          process.kill(p.pid!, 'SIGCONT');
          return;
        }
        await node.startAgent();
      },
      stop: cleanup,
    };
    return node;
  } catch (err) {
    await cleanup();
    throw err;
  }
}

/** The cgroup v2 paths ("0::..." lines) in some output. */
export function cgroupLines(out: string): string[] {
  return out
    .split('\n')
    .filter((l) => l.startsWith('0::'))
    .map((l) => l.slice(3).trim());
}

export function procsOf(dir: string): number[] {
  try {
    return fs
      .readFileSync(path.join(dir, 'cgroup.procs'), 'utf8')
      .split('\n')
      .filter(Boolean)
      .map(Number);
  } catch {
    return [];
  }
}

/** Alive and not a zombie. */
export function alive(pid: number): boolean {
  try {
    const st = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return st.slice(st.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function until(check: () => boolean | Promise<boolean>, ms: number, what: string | (() => string)): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${typeof what === 'string' ? what : what()}`);
    await sleep(25);
  }
}

export interface ProbeResult {
  pid: number;
  cgroup: string;
  env: Record<string, string | null>;
  open: Record<string, string>;
}

export function parseProbes(out: string): ProbeResult[] {
  return out
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as ProbeResult);
}

/** test.serial where Slurm can run; elsewhere test.serial.skip, said loudly. file: import.meta.url. */
export function slurmGate(file: string): { ok: boolean; test: GatedTest } {
  return gate('Slurm', slurmSupport(), file);
}

/**
 * One node (startNode(o)) for a whole test file: started in test.before (then
 * onUp), stopped in test.after.always. node() is the running node (undefined
 * before it is up, or when Slurm cannot run here).
 */
export function nodeSuite(file: string, o: NodeOptions, onUp?: (node: Node, t: ExecutionContext) => void): { test: GatedTest; node: () => Node } {
  const gate = slurmGate(file);
  let node: Node | undefined;
  test.before(async (t) => {
    if (!gate.ok) return;
    node = await startNode(o);
    onUp?.(node, t);
  });
  test.after.always(async () => {
    await node?.stop();
  });
  return { test: gate.test, node: () => node as Node };
}

export interface LineServer {
  /** The socket path. */
  sock: string;
  close(): Promise<void>;
}

/**
 * A scripted stand-in for cgstepd: a Unix socket server at sock that calls
 * onLine(line, socket) for each newline-terminated request (no more once the
 * handler destroyed the socket). close() ends open connections, then the server.
 */
export async function lineServer(sock: string, onLine: (line: string, s: net.Socket) => void): Promise<LineServer> {
  const conns = new Set<net.Socket>();
  const server = net.createServer((s) => {
    conns.add(s);
    let buf = '';
    s.on('data', (d) => {
      buf += d;
      for (let i = buf.indexOf('\n'); i >= 0 && !s.destroyed; i = buf.indexOf('\n')) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        onLine(line, s);
      }
    });
    s.on('error', () => undefined);
    s.on('close', () => conns.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(sock, resolve));
  return {
    sock,
    close: async () => {
      for (const c of conns) c.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}
