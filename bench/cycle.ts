/**
 * bench/cycle: the step cycle a controller sees over the socket, and the same
 * cycle as raw syscalls (bench/floor.c), measured in the same run.
 *
 * Cycle: make job, step and task 0 (optional device program on the step's
 * user/) and put an already running process in task 0, move it out to a
 * parking cgroup, destroy; over the socket as one task.place and a destroy,
 * and as the older three requests (step.create, attach, destroy). Process
 * creation is left out of both sides.
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CgstepClient } from '../src/rpc/client.js';
import type { DeviceRequest } from '../src/rpc/protocol.js';
import { AGENT_NODE_FLAGS, REPO, benchRoot, removeRoot, sleeper, startAgent, summarize, waitReady, type Summary } from './lib.js';

export const CYCLE_DEVICES: DeviceRequest = {
  policy: 'closed',
  allow: ['c 195:0 rw', 'c 195:1 rw', 'c 195:255 rw', 'c 10:200 rw', 'c 4:* rw', 'b 8:0 r'],
  deny: ['c 195:2 rwm', 'c 195:3 rwm'],
};

/**
 * place: one task.place (job, step and task 0 made, the pid moved in, the
 * device program on user/), the move out, destroy: two requests, the cycle a
 * controller such as the SPANK plugin performs. three: step.create, attach,
 * move out, destroy, the cycle of the agent before task.place.
 */
export type CycleKind = 'place' | 'three';

export async function agentCycle(client: CgstepClient, scopeDir: string, park: string, pid: number, cycles: number, devices?: DeviceRequest, jobBase = 1, kind: CycleKind = 'place'): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < cycles; i++) {
    const job = jobBase + i;
    const t0 = performance.now();
    if (kind === 'place') {
      await client.request('task.place', devices ? { job, step: 0, pid, task: 0, stepDevices: devices } : { job, step: 0, pid, task: 0 });
    } else {
      await client.request('step.create', devices ? { job, step: 0, devices } : { job, step: 0 });
      await client.request('attach', { job, step: 0, pid, task: 0 });
    }
    fs.writeFileSync(path.join(park, 'cgroup.procs'), String(pid));
    await client.request('destroy', { job });
    out.push(performance.now() - t0);
  }
  return out;
}

export function buildFloor(): string {
  const bin = path.join(os.tmpdir(), `cgstep-floor-${process.pid}`);
  execFileSync("cc", ["-O2", "-Wall", "-Wno-format-truncation", '-o', bin, path.join(REPO, 'bench/floor.c')]);
  return bin;
}

/** once: the floor loads the program before its first cycle and attaches that one in each (the agent keeps loaded programs for reuse). */
export function floorCycle(bin: string, scopeDir: string, park: string, pid: number, cycles: number, controllers: string, programFile?: string, once = false): number[] {
  const r = spawnSync(bin, [scopeDir, park, String(pid), String(cycles), controllers, ...(programFile ? [programFile, ...(once ? ['once'] : [])] : [])], { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`floor failed: ${r.stderr}`);
  return r.stdout.trim().split('\n').map((ns) => Number(ns) / 1e6);
}

/**
 * The Node.js floor (bench/nodefloor-server.ts, under cgstepd's node flags):
 * the floor's syscalls behind the same socket protocol and client, with
 * nothing of the agent's own. Between it and the C floor is what any Node.js
 * agent answering two requests pays; between the agent and it, the agent's
 * own work.
 */
export async function nodeFloorRig(scope: string, controllers: string, programFile?: string): Promise<{ client: CgstepClient; stop: () => Promise<void> }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-nodefloor-'));
  const socket = path.join(dir, 's.sock');
  const proc = spawn(process.execPath, [...AGENT_NODE_FLAGS, '--import', 'tsx', path.join(REPO, 'bench/nodefloor-server.ts'), socket, scope, controllers, ...(programFile ? [programFile] : [])], { stdio: ['ignore', 'ignore', 'inherit'], cwd: REPO });
  const stop = async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGTERM');
      await new Promise((r) => proc.once('exit', r));
    }
    fs.rmSync(dir, { recursive: true, force: true });
  };
  try {
    await waitReady(socket, proc);
  } catch (err) {
    await stop();
    throw err;
  }
  return connectThenStop(socket, stop);
}

/** A client on the socket, and a stop that closes it before `stop`; `stop` at once if connecting fails. */
async function connectThenStop(socket: string, stop: () => Promise<void>): Promise<{ client: CgstepClient; stop: () => Promise<void> }> {
  try {
    const client = await CgstepClient.connect(socket);
    return {
      client,
      stop: async () => {
        client.close();
        await stop();
      },
    };
  } catch (err) {
    await stop();
    throw err;
  }
}

export interface CycleResult {
  /** The cycle with task.place. */
  agent: Summary;
  /** The floor as the agent now works: with a program, loaded once and attached in each cycle. */
  floor: Summary;
  ratio: number;
  /** With a program: the floor loading it afresh in every cycle (the yardstick before the agent kept programs), and agent / that. */
  floorLoadEach?: Summary;
  ratioLoadEach?: number;
  devices: boolean;
  /** The same cycle as three requests (step.create, attach, destroy). */
  three: { agent: Summary; ratio: number };
  /** One `hello` (no work) on the same connection: what a request's round trip costs by itself, twice in a place cycle. */
  helloRtt: Summary;
  /** The place cycle against the Node.js floor (nodeFloorRig): `ratio` is that ÷ the C floor, `agentRatio` the agent ÷ that. */
  nodeFloor: { cycle: Summary; ratio: number; agentRatio: number };
}

/** An agent, a parked sleeping process and a client: what the place cycle needs (section 3 runs it beside systemd). */
export interface CycleRig {
  client: CgstepClient;
  scope: string;
  park: string;
  pid: number;
  /** `cycles` place cycles (or three-request ones), jobs numbered from `jobBase`. */
  run: (cycles: number, jobBase: number, kind?: CycleKind) => Promise<number[]>;
  stop: () => Promise<void>;
}

export async function cycleRig(devices?: DeviceRequest): Promise<CycleRig> {
  const root = benchRoot('cycle');
  const p = sleeper();
  let agent: Awaited<ReturnType<typeof startAgent>> | null = null;
  const stop = async () => {
    await agent?.stop();
    agent = null;
    p.kill('SIGKILL');
    await removeRoot(root);
  };
  let scope: string;
  let park: string;
  try {
    agent = await startAgent(root, ['--node-name', 'bench']);
    scope = path.join(root, 'system.slice', 'bench_slurmstepd.scope');
    park = path.join(root, 'park');
    fs.mkdirSync(park);
    fs.writeFileSync(path.join(park, 'cgroup.procs'), String(p.pid));
  } catch (err) {
    await stop();
    throw err;
  }
  const c = await connectThenStop(agent.socket, stop);
  const run = (cycles: number, jobBase: number, kind: CycleKind = 'place') => agentCycle(c.client, scope, park, p.pid!, cycles, devices, jobBase, kind);
  return { client: c.client, scope, park, pid: p.pid!, run, stop: c.stop };
}

export async function cycleSection(cycles: number, programFile?: string, devices?: DeviceRequest): Promise<CycleResult> {
  const floorBin = buildFloor();
  let rig: CycleRig | null = null;
  let nodeFloor: Awaited<ReturnType<typeof nodeFloorRig>> | null = null;
  try {
    rig = await cycleRig(devices);
    const { client: c, scope, park, pid } = rig;
    const ctl = fs.readFileSync(path.join(scope, 'cgroup.subtree_control'), 'utf8').trim().split(/\s+/).filter(Boolean).map((x) => `+${x}`).join(' ');
    nodeFloor = await nodeFloorRig(scope, ctl, programFile);
    const nodeRun = (n: number, jobBase: number) => agentCycle(nodeFloor!.client, scope, park, pid, n, devices, jobBase, 'place');
    await rig.run(50, 500000, 'place'); // warm up
    await rig.run(50, 600000, 'three');
    await nodeRun(50, 700000);
    floorCycle(floorBin, scope, park, pid, 50, ctl, programFile, true);
    // The agent's two kinds and both floors in alternating blocks, so a burst of
    // load elsewhere on the machine (or the machine slowing) weighs on all four.
    const a: number[] = [];
    const t: number[] = [];
    const f: number[] = [];
    const nf: number[] = [];
    for (let done = 0; done < cycles; done += 100) {
      const n = Math.min(100, cycles - done);
      a.push(...(await rig.run(n, 1 + done, 'place')));
      t.push(...(await rig.run(n, 1_000_000 + done, 'three')));
      f.push(...floorCycle(floorBin, scope, park, pid, n, ctl, programFile, true));
      nf.push(...(await nodeRun(n, 3_000_000 + done)));
    }
    const rtt: number[] = [];
    for (let i = 0; i < 1000; i++) {
      const t0 = performance.now();
      await c.request('hello', {});
      rtt.push(performance.now() - t0);
    }
    const each = programFile ? summarize(floorCycle(floorBin, scope, park, pid, cycles, ctl, programFile)) : undefined;
    const as = summarize(a);
    const ts = summarize(t);
    const fs_ = summarize(f);
    const nfs = summarize(nf);
    return {
      agent: as,
      floor: fs_,
      ratio: as.median / fs_.median,
      ...(each ? { floorLoadEach: each, ratioLoadEach: as.median / each.median } : {}),
      devices: !!programFile,
      three: { agent: ts, ratio: ts.median / fs_.median },
      helloRtt: summarize(rtt),
      nodeFloor: { cycle: nfs, ratio: nfs.median / fs_.median, agentRatio: as.median / nfs.median },
    };
  } finally {
    await nodeFloor?.stop();
    await rig?.stop();
    fs.rmSync(floorBin, { force: true });
  }
}
