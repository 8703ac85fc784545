/**
 * steps/model: the domain's plain types for jobs, steps and tasks: ids, the
 * named steps, the limits a job or step may carry, and the events the tree
 * publishes. The wire format (src/rpc/protocol.ts) builds its schemas from
 * these; nothing here knows about JSON, sockets or the kernel.
 */

/** Slurm job ids are uint32; 0 and the NO_VAL range are not jobs. */
export const MAX_JOB_ID = 0xfffffff0;

/** Slurm's named steps (step_batch, step_extern, step_interactive); any other step is a number. */
export const STEP_NAMES = ['batch', 'extern', 'interactive'] as const;
export type StepName = (typeof STEP_NAMES)[number];

/** A job id in canonical decimal form ("12"). */
export type JobId = string;
/** A step: a canonical decimal number or one of STEP_NAMES. */
export type StepId = string;

/** Limits for a job (job_<id>/) or a step (step_<n>/user/). */
export interface Limits {
  /** cpuset.cpus list syntax: "0-3,8". */
  cpus?: string;
  mems?: string;
  /** Allocated RAM in bytes; memory.max/high come from cgroup.conf's formulas. */
  memory?: number;
  /** Explicit memory.swap.max in bytes (overrides the AllowedSwapSpace formula). */
  swap?: number;
  pids?: number;
  /** cpu.max as "quota period" in microseconds, or "max". */
  cpuMax?: string;
  cpuWeight?: number;
  oomGroup?: boolean;
}

export type EventKind = 'task.empty' | 'step.empty' | 'job.empty' | 'oom' | 'frozen' | 'thawed';

export interface AgentEvent {
  event: EventKind;
  job: string;
  step?: string;
  task?: string;
  /** For "oom": the oom_kill counter after the change. */
  oomKill?: number;
  time: string;
}
