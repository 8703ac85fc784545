/**
 * dispatch: one request to the step tree (or to status), by op. The server has
 * validated the request and identified the peer; the gate (rpc/authz's facts)
 * admits it and gives the JobAccess the tree consults; then each op meets the
 * layer that does it. A new op that is not handled here fails to compile.
 */
import { AgentError } from './errors.js';
import type { Gate } from './gate.js';
import { maySee } from './rpc/authz.js';
import type { JobAccess } from './steps/index.js';
import type { Peer } from './rpc/peercred.js';
import type { Request } from './rpc/protocol.js';
import { Streamed } from './rpc/stream.js';
import { PROTOCOL_VERSION } from './rpc/version.js';
import type { AgentStatus } from './status.js';
import type { Leaf, Move, StepTree } from './steps/index.js';

export interface DispatchDeps {
  version: string;
  tree: StepTree;
  status: () => AgentStatus;
  gate: Gate;
}

export type Dispatch = (req: Request, peer: Peer) => Promise<unknown>;

export function makeDispatch(d: DispatchDeps): Dispatch {
  const { tree } = d;
  return async (raw, peer) => {
    const g = await d.gate.admit(raw, peer);
    try {
      return await run(g.req, peer, g.access);
    } finally {
      g.close();
    }
  };

  async function run(req: Request, peer: Peer, access: JobAccess): Promise<unknown> {
    switch (req.op) {
      case 'hello':
        return { protocol: PROTOCOL_VERSION, version: d.version };
      case 'status':
        return d.status();
      case 'list':
        return new Streamed('jobs', peer.role === 'user' ? tree.listJobs((job) => maySee(peer, tree.ownerOf(job))) : tree.listJobs());
      case 'job.create':
        return tree.createJob(req.job, req.limits, req.devices, access);
      case 'step.create':
        return tree.createStep(req.job, req.step, req.limits, req.devices, access);
      case 'attach':
        return tree.attach(req.job, req.step, req.pid, leafOf(req), req.devices, access);
      case 'task.place':
        return placeReply(req, await tree.place({ ...req, moves: movesOf(req) }, access));
      case 'devices.set':
        return tree.setDevices(req.job, req.step, req.task, req.devices, access);
      case 'stats':
        return tree.stats(req.job, req.step, access);
      case 'signal':
        return tree.signal(req.job, req.step, req.signal, access);
      case 'freeze':
        return tree.freeze(req.job, req.step, true, access);
      case 'thaw':
        return tree.freeze(req.job, req.step, false, access);
      case 'destroy':
        return tree.destroy(req.job, req.step, req.force ?? false, req.reapJob ?? false, access);
      case 'events':
        throw new AgentError('EINVAL', 'events is handled by the server');
      default:
        return unhandled(req);
    }
  }
}

/** The leaf an attach names: a task number, slurm or special (task 0 when none is given). */
export function leafOf(req: { task?: number; leaf?: 'slurm' | 'special' }): Leaf {
  if (req.task !== undefined && req.leaf !== undefined) throw new AgentError('EINVAL', 'give either task or leaf, not both');
  return req.leaf ?? { task: req.task ?? 0 };
}

type PlaceRequest = Extract<Request, { op: 'task.place' }>;

/** The moves of a task.place: its pid into one leaf, or each of its tasks into its own. */
export function movesOf(req: PlaceRequest): Move[] {
  if (!req.tasks) {
    if (req.pid === undefined) throw new AgentError('EINVAL', 'task.place needs pid (with task or leaf) or tasks');
    return [{ pid: req.pid, leaf: leafOf(req) }];
  }
  if (req.pid !== undefined || req.task !== undefined || req.leaf !== undefined) throw new AgentError('EINVAL', 'give either tasks or pid (with task or leaf), not both');
  const tasks = new Set<number>();
  for (const t of req.tasks) {
    if (tasks.has(t.task)) throw new AgentError('EINVAL', `task ${t.task} is named twice`);
    tasks.add(t.task);
  }
  return req.tasks.map((t) => ({ pid: t.pid, leaf: { task: t.task } }));
}

/** task.place's reply: one placement as {leaf, pid, ...}, several as tasks: [{task, pid, leaf, ...}]. */
function placeReply(req: PlaceRequest, r: Awaited<ReturnType<StepTree['place']>>) {
  const { placed, ...levels } = r;
  if (!req.tasks) return { ...levels, ...placed[0] };
  return { ...levels, tasks: placed.map((p, i) => ({ task: req.tasks![i].task, ...p })) };
}

function unhandled(req: never): never {
  throw new AgentError('EINTERNAL', `no handler for op ${(req as { op: string }).op}`);
}
