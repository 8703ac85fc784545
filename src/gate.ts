/**
 * gate: what the agent checks before a request reaches the tree. It gathers the
 * facts rpc/authz decides on (the process behind a pid, read from /proc
 * through src/proc; which job that process is in now; device paths resolved to
 * numbers off the event loop by devices/paths) and hands the tree the
 * JobAccess authz makes, which the tree consults inside the job's lock.
 * Decides nothing itself.
 */
import path from 'node:path';
import { AgentError } from './errors.js';
import { DevicePathResolver } from './devices/index.js';
import { checkRuleOverlap } from './rpc/limits.js';
import { ProcessRef } from './proc/index.js';
import { DEVICE_FIELDS, admitRequest, checkProcess, jobAccess, type Actor, type ProcessFacts, type Protected } from './rpc/authz.js';
import type { JobAccess } from './steps/index.js';
import type { DeviceRequest } from './devices/request.js';
import type { Request } from './rpc/protocol.js';
import { TreePaths, parseJobName, type Leaf } from './steps/names.js';

export interface GateOptions {
  mountPoint: string;
  scopeDir: () => string;
  protectedPids: () => Protected;
  resolver?: DevicePathResolver;
}

export interface Admitted<R> {
  /** The request with its device paths replaced by numbers. */
  req: R;
  access: JobAccess;
  /** Release what the check holds (the process's /proc directory). */
  close(): void;
}

export class Gate {
  private readonly resolver: DevicePathResolver;

  constructor(private readonly o: GateOptions) {
    this.resolver = o.resolver ?? new DevicePathResolver();
  }

  /** Check the request for this peer (EPERM/ENOENT/EINVAL when refused) and prepare it for the tree. */
  async admit<R extends Request>(req: R, actor: Actor): Promise<Admitted<R>> {
    const fields = req as unknown as Record<string, unknown>;
    admitRequest(actor, fields as { op: string } & Record<string, unknown>);
    let out = req;
    for (const f of DEVICE_FIELDS) {
      const d = fields[f] as DeviceRequest | undefined;
      if (!d) continue;
      const resolved = await this.resolver.resolve(d, actor.role === 'admin');
      checkRuleOverlap(resolved, actor.role === 'admin');
      if (resolved !== d) out = { ...out, [f]: resolved };
    }
    const refs = this.openProcesses(fields, actor);
    const job = String(fields.job);
    // Just before each move: still the process checked (not a reused pid), and not exited since.
    // Just after it: the open /proc/PID directory is bound to the process checked
    // (as a pidfd is; pidfd_send_signal takes either), so while it holds its pid
    // the write cannot have moved another process. One reaped between the first
    // check and the write, whose pid a new process took in those microseconds,
    // would have been moved instead. That cannot be undone (where the newcomer
    // came from is unknown): the request fails, the log names the pid, and the
    // newcomer stays in the leaf until its job is destroyed.
    const refOf = (pid: number): ProcessRef => {
      const ref = refs.get(pid);
      if (!ref) throw new AgentError('EINTERNAL', `process ${pid} was not checked for this request`);
      return ref;
    };
    const moveChecks = refs.size
      ? {
          beforeMove: (pid: number) => {
            const ref = refOf(pid);
            if (!ref.running()) throw new AgentError('ENOENT', `process ${pid} exited before it was moved`);
            // Inside the job's lock: where the process is now, not where it was when admitted (root may have placed it since).
            if (actor.role !== 'admin') checkProcess(actor, this.facts(ref, true), job, this.targetOf(fields, pid), this.o.protectedPids());
          },
          afterMove: (pid: number) => {
            if (!refOf(pid).holdsPid()) throw new AgentError('ENOENT', `process ${pid} was reaped while it was moved; if a new process took its pid meanwhile, that one may have been moved in its place`);
          },
        }
      : undefined;
    const owner = typeof fields.owner === 'number' ? fields.owner : undefined;
    return { req: out, access: jobAccess(actor, owner, moveChecks), close: () => closeAll(refs) };
  }

  /**
   * Every process the request would move (its pid, or each of its tasks'),
   * opened and checked for this peer; all closed again if one is refused.
   */
  private openProcesses(fields: Record<string, unknown>, actor: Actor): Map<number, ProcessRef> {
    const refs = new Map<number, ProcessRef>();
    const job = String(fields.job);
    try {
      for (const pid of pidsOf(fields)) {
        if (refs.has(pid)) throw new AgentError('EINVAL', `pid ${pid} is named twice`);
        const proc = ProcessRef.open(pid);
        refs.set(pid, proc);
        // A zombie is refused before anything is made for it: the kernel would move nothing.
        if (proc.info.exited) throw new AgentError('ENOENT', `no process ${pid} (it has exited)`);
        checkProcess(actor, this.facts(proc), job, this.targetOf(fields, pid), this.o.protectedPids());
      }
    } catch (err) {
      closeAll(refs);
      throw err;
    }
    return refs;
  }

  /** The facts authz decides on; the cgroup is read from /proc only if a check asks for it (admins' do not). */
  private facts(ref: ProcessRef, fresh = false): ProcessFacts {
    let place: { job: string | null | 'scope'; at: string | null } | undefined;
    const placeOf = () => (place ??= this.placeOfCgroup(ref.cgroup(fresh)));
    return {
      ...ref.info,
      get job() {
        return placeOf().job;
      },
      get at() {
        return placeOf().at;
      },
    };
  }

  /**
   * Where a cgroup path (as /proc shows it) lies: its job (null outside the
   * scope, 'scope' in it but in no job) and its path below the scope.
   */
  private placeOfCgroup(cg: string | null): { job: string | null | 'scope'; at: string | null } {
    if (cg === null) return { job: null, at: null };
    const scope = '/' + path.relative(this.o.mountPoint, this.o.scopeDir());
    // /proc shows paths from the agent's cgroup namespace root, which may sit below the mount.
    const i = cg.endsWith(scope) ? cg.length - scope.length : cg.indexOf(scope + '/');
    if (i < 0) return { job: null, at: null };
    const at = cg.slice(i + scope.length + 1);
    return { job: (at && parseJobName(at.split('/')[0])) || 'scope', at };
  }

  /** The leaf a request moves `pid` to, below the scope (as placeOfCgroup's `at`). */
  private targetOf(fields: Record<string, unknown>, pid: number): string {
    const tasks = fields.tasks as { pid: number; task: number }[] | undefined;
    const leaf: Leaf = fields.leaf === 'slurm' || fields.leaf === 'special' ? fields.leaf : { task: Number(tasks?.find((t) => t.pid === pid)?.task ?? fields.task ?? 0) };
    const scope = this.o.scopeDir();
    return path.relative(scope, new TreePaths(scope).leaf(String(fields.job), String(fields.step), leaf));
  }
}

/** The pids a request names: its pid, or those of its tasks. */
function pidsOf(fields: Record<string, unknown>): number[] {
  if (typeof fields.pid === 'number') return [fields.pid];
  const tasks = fields.tasks as { pid: number }[] | undefined;
  return tasks ? tasks.map((t) => t.pid) : [];
}

function closeAll(refs: Map<number, ProcessRef>): void {
  for (const r of refs.values()) r.close();
}
