/**
 * rpc/protocol: the wire format between cgstepd and its clients.
 *
 * One JSON object per line in each direction over a Unix stream socket.
 *   request : { "v": "1.0", "id": 7, "op": "step.create", ...arguments }
 *   reply   : { "id": 7, "ok": true, "result": {...} }
 *           | { "id": 7, "ok": false, "error": { "code": "EINVAL", "message": "..." } }
 *   event   : { "event": "oom", "job": "12", "step": "0", ... }   (after op "events")
 * `v` is optional on each request; when present its major must equal ours.
 * This module owns the schemas and nothing else: no sockets, no cgroups. The
 * agent checks requests with rpc/validate, which mirrors these schemas and
 * loads this module only for requests it declines.
 */
import { z } from 'zod';
import type { DeviceRequest } from '../devices/request.js';
import { MAX_JOB_ID, STEP_NAMES, type Limits } from '../steps/model.js';
import { MAX_PLACED_TASKS } from './version.js';

export { PROTOCOL_VERSION, MAX_LINE_BYTES, MAX_PLACED_TASKS, READ_ONLY_OPS, majorOf } from './version.js';

export const jobId = z
  .union([z.string(), z.number()])
  .transform((v, ctx) => {
    const s = String(v);
    if (!/^[1-9][0-9]{0,9}$/.test(s) || Number(s) > MAX_JOB_ID) {
      ctx.addIssue({ code: 'custom', message: `job id must be an integer from 1 to ${MAX_JOB_ID}, got ${JSON.stringify(v)}` });
      return z.NEVER;
    }
    return s;
  });

export { STEP_NAMES };
export type { DeviceRequest, Limits };
/** A step is a number (step_<n>) or one of Slurm's named steps. */
export const stepId = z
  .union([z.string(), z.number()])
  .transform((v, ctx) => {
    const s = String(v);
    if ((STEP_NAMES as readonly string[]).includes(s)) return s;
    if (!/^(0|[1-9][0-9]{0,9})$/.test(s) || Number(s) > MAX_JOB_ID) {
      ctx.addIssue({ code: 'custom', message: `step must be an integer from 0 to ${MAX_JOB_ID} or one of ${STEP_NAMES.join(', ')}, got ${JSON.stringify(v)}` });
      return z.NEVER;
    }
    return s;
  });

export const taskId = z.number().int().min(0).max(0x7fffffff);
const pid = z.number().int().min(1).max(0x3fffffff);
/** A uid_t other than (uid_t)-1. */
export const uid = z.number().int().min(0).max(0xfffffffe);
const bytes = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
/** cpuset list syntax: "0-3,8,10-11". */
const cpuList = z.string().max(4096).regex(/^\d+(-\d+)?(,\d+(-\d+)?)*$/, 'expected a list like 0-3,8');

export const limitsSchema = z.strictObject({
  cpus: cpuList.optional(),
  mems: cpuList.optional(),
  /** Allocated RAM in bytes; memory.max/high come from cgroup.conf's formulas. */
  memory: bytes.optional(),
  /** Explicit memory.swap.max in bytes (overrides the AllowedSwapSpace formula). */
  swap: bytes.optional(),
  pids: z.number().int().min(1).max(0x3fffffff).optional(),
  /** cpu.max as "quota period" in microseconds, or "max". */
  cpuMax: z.string().regex(/^(max|\d{1,12})( \d{1,12})?$/).optional(),
  cpuWeight: z.number().int().min(1).max(10000).optional(),
  oomGroup: z.boolean().optional(),
}) satisfies z.ZodType<Limits>;

/** Device rule text: "c 195:* rw", "a *:* rwm", or a path "/dev/nvidia0" with optional access. */
const deviceRule = z.string().min(1).max(512);
export const devicesSchema = z.strictObject({
  allow: z.array(deviceRule).max(4096).optional(),
  deny: z.array(deviceRule).max(4096).optional(),
  /**
   * gres devices allocated to this job/step: absolute device paths from gres.conf,
   * or "<name>:<index>" (the index-th File= of that gres name, 0-based, in gres.conf
   * order, which is how Slurm numbers CUDA_VISIBLE_DEVICES / SLURM_STEP_GPUS).
   */
  gres: z.array(z.string().min(1).max(4096)).max(1024).optional(),
  /** "open" (default: everything not denied) or "closed" (pseudo-devices plus allow). */
  policy: z.enum(['open', 'closed']).optional(),
}) satisfies z.ZodType<DeviceRequest>;

const base = {
  v: z.string().regex(/^\d+\.\d+$/).optional(),
  id: z.union([z.string().max(128), z.number().int()], { message: 'every request needs an id: a string (up to 128 characters) or an integer' }),
};

export const requestSchema = z.discriminatedUnion('op', [
  z.strictObject({ ...base, op: z.literal('hello') }),
  z.strictObject({ ...base, op: z.literal('status') }),
  z.strictObject({ ...base, op: z.literal('list') }),
  z.strictObject({ ...base, op: z.literal('events') }),
  z.strictObject({ ...base, op: z.literal('job.create'), job: jobId, limits: limitsSchema.optional(), devices: devicesSchema.optional(),
    /** The uid the job belongs to (root and operators only; default: the peer's uid). */
    owner: uid.optional() }),
  z.strictObject({ ...base, op: z.literal('step.create'), job: jobId, step: stepId, limits: limitsSchema.optional(), devices: devicesSchema.optional() }),
  z.strictObject({
    ...base,
    op: z.literal('attach'),
    job: jobId,
    step: stepId,
    pid,
    task: taskId.optional(),
    leaf: z.enum(['slurm', 'special']).optional(),
    devices: devicesSchema.optional(),
  }),
  z.strictObject({
    ...base,
    op: z.literal('task.place'),
    job: jobId,
    step: stepId,
    /** One process, into task `task`'s leaf (0 when neither task nor leaf is given) or `leaf`. */
    pid: pid.optional(),
    /** Instead of pid: several processes, each into its task's leaf; all are placed or none. */
    tasks: z.array(z.strictObject({ task: taskId, pid })).min(1).max(MAX_PLACED_TASKS).optional(),
    task: taskId.optional(),
    leaf: z.enum(['slurm', 'special']).optional(),
    /** The job's owner when this request makes the job (as job.create's owner). */
    owner: uid.optional(),
    /** Used only when this request makes the job; jobDevices.gres is then the job's allocation. */
    jobLimits: limitsSchema.optional(),
    jobDevices: devicesSchema.optional(),
    /** Used only when this request makes the step (its user/). */
    stepLimits: limitsSchema.optional(),
    stepDevices: devicesSchema.optional(),
    /** The leaf's own policy, as attach's devices. */
    devices: devicesSchema.optional(),
  }),
  z.strictObject({ ...base, op: z.literal('devices.set'), job: jobId, step: stepId.optional(), task: taskId.optional(), devices: devicesSchema }),
  z.strictObject({ ...base, op: z.literal('stats'), job: jobId, step: stepId.optional() }),
  z.strictObject({ ...base, op: z.literal('signal'), job: jobId, step: stepId.optional(), signal: z.union([z.string().max(16), z.number().int().min(1).max(64)]) }),
  z.strictObject({ ...base, op: z.literal('freeze'), job: jobId, step: stepId.optional() }),
  z.strictObject({ ...base, op: z.literal('thaw'), job: jobId, step: stepId.optional() }),
  z.strictObject({ ...base, op: z.literal('destroy'), job: jobId, step: stepId.optional(), force: z.boolean().optional(),
    /** With a step: also remove the job when this was its last step (atomic in the agent). */
    reapJob: z.boolean().optional() }),
]);
export type Request = z.infer<typeof requestSchema>;
export type Op = Request['op'];

export interface ErrorBody { code: string; message: string }
export type Reply =
  | { id: string | number | null; ok: true; result: unknown }
  | { id: string | number | null; ok: false; error: ErrorBody };

export type { AgentEvent, EventKind } from '../steps/model.js';
