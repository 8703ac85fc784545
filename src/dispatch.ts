/**
 * dispatch: one request to the step tree (or to status), by op. The server has
 * validated the request and identified the peer; this is where each op meets
 * the layer that does it. A new op that is not handled here fails to compile.
 */
import { AgentError } from './errors.js';
import type { Peer } from './rpc/peercred.js';
import type { Request } from './rpc/protocol.js';
import { Streamed } from './rpc/stream.js';
import { PROTOCOL_VERSION } from './rpc/version.js';
import type { AgentStatus } from './status.js';
import type { Leaf, StepTree } from './steps/index.js';

export interface DispatchDeps {
  version: string;
  tree: StepTree;
  status: () => AgentStatus;
}

export type Dispatch = (req: Request, peer: Peer) => Promise<unknown>;

export function makeDispatch(d: DispatchDeps): Dispatch {
  const { tree } = d;
  return async (req) => {
    switch (req.op) {
      case 'hello':
        return { protocol: PROTOCOL_VERSION, version: d.version };
      case 'status':
        return d.status();
      case 'list':
        return new Streamed('jobs', tree.listJobs());
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
      default:
        return unhandled(req);
    }
  };
}

/** The leaf an attach names: a task number, slurm or special (task 0 when none is given). */
export function leafOf(req: { task?: number; leaf?: 'slurm' | 'special' }): Leaf {
  if (req.task !== undefined && req.leaf !== undefined) throw new AgentError('EINVAL', 'give either task or leaf, not both');
  return req.leaf ?? { task: req.task ?? 0 };
}

function unhandled(req: never): never {
  throw new AgentError('EINTERNAL', `no handler for op ${(req as { op: string }).op}`);
}
