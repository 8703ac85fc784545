/**
 * rpc/validate: requests checked without the schema library on the common path.
 *
 * The zod schema in rpc/protocol.ts is the reference. A hand-written check
 * mirrors it for every op and either returns exactly what the schema would
 * (job and step ids as strings, absent optional fields absent) or declines.
 * A declined request, valid or not, goes to the schema itself, which decides
 * and words the error, so errors are the schema's by construction; the
 * property test in test/unit/validate.test.ts holds the two together (the
 * fast check never accepts what the schema refuses, and returns the same
 * request). zod is loaded on the first declined request, not at start: it
 * costs about 13 MiB of RSS and a JSON parse plus a schema walk per request.
 */
import { createRequire } from 'node:module';
import { AgentError } from '../errors.js';
import type { Request, requestSchema } from './protocol.js';
import { MAX_PLACED_TASKS } from './version.js';
import { MAX_JOB_ID, STEP_NAMES } from '../steps/model.js';

const BAD = Symbol('bad');
type Check = (v: unknown) => unknown;
/** A field: its check, and whether it may be absent. */
type Field = [check: Check, optional: boolean];
type Shape = Map<string, Field>;

const req = (c: Check): Field => [c, false];
const opt = (c: Check): Field => [c, true];

function int(min: number, max: number): Check {
  return (v) => (typeof v === 'number' && Number.isSafeInteger(v) && v >= min && v <= max ? v : BAD);
}

function str(min: number, max: number, re?: RegExp): Check {
  return (v) => (typeof v === 'string' && v.length >= min && v.length <= max && (!re || re.test(v)) ? v : BAD);
}

const bool: Check = (v) => (typeof v === 'boolean' ? v : BAD);

function oneOf(values: readonly string[]): Check {
  return (v) => (typeof v === 'string' && values.includes(v) ? v : BAD);
}

function array(item: Check, max: number, min = 0): Check {
  return (v) => {
    if (!Array.isArray(v) || v.length > max || v.length < min) return BAD;
    const out: unknown[] = [];
    for (const x of v) {
      const y = item(x);
      if (y === BAD) return BAD;
      out.push(y);
    }
    return out;
  };
}

/** A strict object: every key known, every required key present; a new object of the checked values. */
function object(shape: Shape): Check {
  return (v) => {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) return BAD;
    const out: Record<string, unknown> = {};
    let present = 0;
    for (const k of Object.keys(v)) {
      const f = shape.get(k);
      if (!f) return BAD;
      const x = f[0]((v as Record<string, unknown>)[k]);
      if (x === BAD) return BAD;
      out[k] = x;
      if (!f[1]) present++;
    }
    let required = 0;
    for (const f of shape.values()) if (!f[1]) required++;
    return present === required ? out : BAD;
  };
}

const JOB_RE = /^[1-9][0-9]{0,9}$/;
const STEP_RE = /^(0|[1-9][0-9]{0,9})$/;

/** The schema's jobId: a string or a number, given back as its decimal string. */
const job: Check = (v) => {
  if (typeof v !== 'string' && (typeof v !== 'number' || !Number.isFinite(v))) return BAD;
  const s = String(v);
  return JOB_RE.test(s) && Number(s) <= MAX_JOB_ID ? s : BAD;
};

const step: Check = (v) => {
  if (typeof v !== 'string' && (typeof v !== 'number' || !Number.isFinite(v))) return BAD;
  const s = String(v);
  if ((STEP_NAMES as readonly string[]).includes(s)) return s;
  return STEP_RE.test(s) && Number(s) <= MAX_JOB_ID ? s : BAD;
};

const task = int(0, 0x7fffffff);
const pid = int(1, 0x3fffffff);
const bytes = int(0, Number.MAX_SAFE_INTEGER);
const cpuList = str(0, 4096, /^\d+(-\d+)?(,\d+(-\d+)?)*$/);

const limits = object(
  new Map([
    ['cpus', opt(cpuList)],
    ['mems', opt(cpuList)],
    ['memory', opt(bytes)],
    ['swap', opt(bytes)],
    ['pids', opt(int(1, 0x3fffffff))],
    ['cpuMax', opt(str(0, Infinity, /^(max|\d{1,12})( \d{1,12})?$/))],
    ['cpuWeight', opt(int(1, 10000))],
    ['oomGroup', opt(bool)],
  ]),
);

const devices = object(
  new Map([
    ['allow', opt(array(str(1, 512), 4096))],
    ['deny', opt(array(str(1, 512), 4096))],
    ['gres', opt(array(str(1, 4096), 1024))],
    ['policy', opt(oneOf(['open', 'closed']))],
  ]),
);

const id: Check = (v) => ((typeof v === 'string' && v.length <= 128) || (typeof v === 'number' && Number.isSafeInteger(v)) ? v : BAD);
const base: [string, Field][] = [
  ['v', opt(str(0, Infinity, /^\d+\.\d+$/))],
  ['id', req(id)],
];
const jobOnly: [string, Field][] = [['job', req(job)], ['step', opt(step)]];

function op(name: string, ...fields: [string, Field][]): [string, Check] {
  return [name, object(new Map([...base, ['op', req((v) => v)], ...fields]))];
}

/** Every op of the schema, field for field. */
const OPS = new Map<string, Check>([
  op('hello'),
  op('status'),
  op('list'),
  op('events'),
  op('job.create', ['job', req(job)], ['limits', opt(limits)], ['devices', opt(devices)]),
  op('step.create', ['job', req(job)], ['step', req(step)], ['limits', opt(limits)], ['devices', opt(devices)]),
  op('attach', ['job', req(job)], ['step', req(step)], ['pid', req(pid)], ['task', opt(task)], ['leaf', opt(oneOf(['slurm', 'special']))], ['devices', opt(devices)]),
  op(
    'task.place',
    ['job', req(job)],
    ['step', req(step)],
    ['pid', opt(pid)],
    ['tasks', opt(array(object(new Map([['task', req(task)], ['pid', req(pid)]])), MAX_PLACED_TASKS, 1))],
    ['task', opt(task)],
    ['leaf', opt(oneOf(['slurm', 'special']))],
    ['owner', opt(int(0, 0xfffffffe))],
    ['jobLimits', opt(limits)],
    ['jobDevices', opt(devices)],
    ['stepLimits', opt(limits)],
    ['stepDevices', opt(devices)],
    ['devices', opt(devices)],
  ),
  op('devices.set', ['job', req(job)], ['step', opt(step)], ['task', opt(task)], ['devices', req(devices)]),
  op('stats', ...jobOnly),
  op('signal', ...jobOnly, ['signal', req((v) => (typeof v === 'string' ? str(0, 16)(v) : int(1, 64)(v)))]),
  op('freeze', ...jobOnly),
  op('thaw', ...jobOnly),
  op('destroy', ...jobOnly, ['force', opt(bool)], ['reapJob', opt(bool)]),
]);

/** The request as the schema would give it back, or null where the schema must decide. */
export function parseFast(raw: unknown): Request | null {
  if (typeof raw !== 'object' || raw === null) return null;
  const name = (raw as { op?: unknown }).op;
  const check = typeof name === 'string' ? OPS.get(name) : undefined;
  if (!check) return null;
  const out = check(raw);
  return out === BAD ? null : (out as Request);
}

let schema: typeof requestSchema | null = null;

function loadSchema(): typeof requestSchema {
  // require() of an ES module: synchronous, so requests keep their order.
  schema ??= (createRequire(import.meta.url)('./protocol.js') as typeof import('./protocol.js')).requestSchema;
  return schema;
}

// Nodes without require() of ES modules (before 20.19) load the schema now, the slow way round.
if (!(process.features as { require_module?: boolean }).require_module) schema = (await import('./protocol.js')).requestSchema;

/** A valid request, or an EINVAL AgentError worded by the schema. */
export function parseRequest(raw: unknown): Request {
  const fast = parseFast(raw);
  if (fast) return fast;
  const r = loadSchema().safeParse(raw);
  if (!r.success) throw new AgentError('EINVAL', describeIssues(r.error.issues));
  return r.data;
}

function describeIssues(issues: readonly { path: PropertyKey[]; message: string; code?: string; keys?: string[] }[]): string {
  const first = issues.slice(0, 3).map((i) => {
    const where = i.path.length ? i.path.map(String).join('.') : 'request';
    if (i.code === 'unrecognized_keys' && i.keys) return `${where}: unknown field(s) ${i.keys.join(', ')}`;
    return `${where}: ${i.message}`;
  });
  return `invalid request: ${first.join('; ')}${issues.length > 3 ? ` (+${issues.length - 3} more)` : ''}`;
}
