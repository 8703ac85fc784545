/**
 * The hand-written request check (rpc/validate) against the zod schema it
 * mirrors (rpc/protocol): for any input, it accepts exactly what the schema
 * accepts and gives back the same request; what it declines gets the
 * schema's own error. Pure.
 */
import test from 'ava';
import fc from 'fast-check';
import { requestSchema } from '../../src/rpc/protocol.js';
import { parseFast, parseRequest } from '../../src/rpc/validate.js';
import { AgentError } from '../../src/errors.js';

const OPS = ['hello', 'status', 'list', 'events', 'job.create', 'step.create', 'attach', 'task.place', 'devices.set', 'stats', 'signal', 'freeze', 'thaw', 'destroy'];

/** Numbers near every bound the schema has, and things that are not numbers. */
const edgeInt = fc.oneof(
  fc.integer({ min: -3, max: 70 }),
  fc.constantFrom(0x7fffffff, 0x80000000, 0x3fffffff, 0x40000000, 0xfffffff0, 0xfffffff1, 10000, 10001, Number.MAX_SAFE_INTEGER, 2 ** 53, -0, 1.5, 1e21, NaN, Infinity),
  fc.integer(),
);
const idLike = fc.oneof(edgeInt, fc.constantFrom('1', '0', '01', '4294967280', '4294967281', '12', 'batch', 'extern', 'interactive', 'BATCH', '1e2', '', ' 1', '..'), fc.string({ maxLength: 12 }));
const anyValue = fc.oneof(idLike, fc.boolean(), fc.constant(null), fc.constant([]), fc.constant({}));
const text = (max: number) => fc.oneof(fc.string({ maxLength: 8 }), fc.constantFrom('', 'x'.repeat(max), 'x'.repeat(max + 1)));
const cpuList = fc.oneof(fc.constantFrom('0-3,8', '0', '1-2,4-5', '', '0-', 'a', '0,,1'), fc.string({ maxLength: 6 }));
const maybe = <T>(a: fc.Arbitrary<T>) => fc.oneof(a, anyValue);

const limits = fc.oneof(
  fc.record(
    {
      cpus: maybe(cpuList),
      mems: maybe(cpuList),
      memory: edgeInt,
      swap: edgeInt,
      pids: edgeInt,
      cpuMax: maybe(fc.constantFrom('max', '100000 100000', '50000', 'max 100000', '1234567890123', 'x', '')),
      cpuWeight: edgeInt,
      oomGroup: fc.oneof(fc.boolean(), anyValue),
      extra: anyValue,
    },
    { requiredKeys: [] },
  ),
  anyValue,
);
const rules = (max: number) => fc.oneof(fc.array(text(max), { maxLength: 4 }), anyValue);
const devices = fc.oneof(
  fc.record(
    { allow: rules(512), deny: rules(512), gres: rules(4096), policy: maybe(fc.constantFrom('open', 'closed', 'Closed')), extra: anyValue },
    { requiredKeys: [] },
  ),
  anyValue,
);
/** task.place's tasks: valid lists, empty ones, odd items. */
const tasks = fc.oneof(
  fc.array(fc.record({ task: fc.nat({ max: 9 }), pid: fc.integer({ min: 1, max: 99999 }) }), { minLength: 1, maxLength: 4 }),
  fc.array(fc.record({ task: edgeInt, pid: edgeInt, extra: anyValue }, { requiredKeys: [] }), { maxLength: 3 }),
  anyValue,
);

/** A request of a known op with each field present or not, valid or not, and now and then a field no op has. */
const request = fc.record(
  {
    op: fc.oneof(fc.constantFrom(...OPS), fc.constantFrom('nope', '__proto__', 'constructor', 'toString')),
    id: fc.oneof(idLike, fc.string({ maxLength: 130 }), fc.constant('x'.repeat(129))),
    v: maybe(fc.constantFrom('1.0', '2.3', '1', '1.0.0')),
    job: idLike,
    step: idLike,
    pid: edgeInt,
    task: edgeInt,
    tasks,
    leaf: maybe(fc.constantFrom('slurm', 'special', 'user')),
    signal: fc.oneof(edgeInt, fc.constantFrom('TERM', 'SIGKILL', 'x'.repeat(16), 'x'.repeat(17))),
    force: maybe(fc.boolean()),
    reapJob: maybe(fc.boolean()),
    limits,
    devices,
    owner: edgeInt,
    jobLimits: limits,
    jobDevices: devices,
    stepLimits: limits,
    stepDevices: devices,
    bogus: anyValue,
  },
  { requiredKeys: ['op'] },
);

/** Inputs as the server has them: the output of JSON.parse. */
function agree(input: unknown): void {
  const x = input === undefined ? undefined : JSON.parse(JSON.stringify(input));
  const fast = parseFast(x);
  const ref = requestSchema.safeParse(x);
  if (fast === null) {
    if (ref.success) throw new Error(`declined a request the schema accepts: ${JSON.stringify(x)}`);
    return;
  }
  if (!ref.success) throw new Error(`accepted a request the schema refuses: ${JSON.stringify(x)}: ${ref.error.message}`);
  // Same request, field for field (absent stays absent).
  const a = JSON.stringify(fast, Object.keys(fast).sort());
  const b = JSON.stringify(ref.data, Object.keys(ref.data).sort());
  if (a !== b || Object.keys(fast).length !== Object.keys(ref.data).length) throw new Error(`different result for ${JSON.stringify(x)}: ${a} vs ${b}`);
}

test('property: the fast check accepts exactly what the schema accepts, with the same result', (t) => {
  fc.assert(fc.property(request, (x) => agree(x)), { numRuns: 8000 });
  t.pass();
});

test('property: the same for requests that are valid more often (each op with its own fields)', (t) => {
  const valid = fc.oneof(
    fc.record({ op: fc.constant('step.create'), id: fc.nat(), job: fc.integer({ min: 1, max: 99999 }), step: fc.oneof(fc.nat({ max: 9 }), fc.constant('batch')), limits: fc.option(limits, { nil: undefined }), devices: fc.option(devices, { nil: undefined }) }, { requiredKeys: ['op', 'id', 'job', 'step'] }),
    fc.record({ op: fc.constant('attach'), id: fc.string({ maxLength: 4 }), job: fc.integer({ min: 1, max: 99999 }), step: fc.nat({ max: 9 }), pid: fc.integer({ min: 1, max: 99999 }), task: fc.nat({ max: 9 }), leaf: fc.constantFrom('slurm', 'special'), devices }, { requiredKeys: ['op', 'id', 'job', 'step', 'pid'] }),
    fc.record({ op: fc.constant('task.place'), id: fc.nat(), job: fc.integer({ min: 1, max: 99999 }), step: fc.nat({ max: 9 }), pid: fc.integer({ min: 1, max: 99999 }), task: fc.nat({ max: 9 }), leaf: fc.constantFrom('slurm', 'special'), owner: fc.nat({ max: 70000 }), jobLimits: limits, jobDevices: devices, stepLimits: limits, stepDevices: devices, devices }, { requiredKeys: ['op', 'id', 'job', 'step', 'pid'] }),
    fc.record({ op: fc.constant('task.place'), id: fc.nat(), job: fc.integer({ min: 1, max: 99999 }), step: fc.nat({ max: 9 }), tasks, owner: fc.nat({ max: 70000 }), stepDevices: devices }, { requiredKeys: ['op', 'id', 'job', 'step', 'tasks'] }),
    fc.record({ op: fc.constant('destroy'), id: fc.nat(), job: fc.integer({ min: 1, max: 99999 }), step: fc.nat({ max: 9 }), force: fc.boolean(), reapJob: fc.boolean() }, { requiredKeys: ['op', 'id', 'job'] }),
    fc.record({ op: fc.constantFrom('stats', 'freeze', 'thaw', 'signal', 'devices.set', 'job.create'), id: fc.nat(), job: fc.integer({ min: 1, max: 99999 }), step: fc.nat({ max: 9 }), signal: fc.constantFrom(9, 'TERM'), devices, limits }, { requiredKeys: ['op', 'id', 'job'] }),
  );
  let accepted = 0;
  fc.assert(
    fc.property(valid, (x) => {
      agree(x);
      if (parseFast(x)) accepted++;
    }),
    { numRuns: 5000 },
  );
  t.true(accepted > 1000, `only ${accepted} of 5000 were valid: the generator tests little`);
});

test('bounds the generators do not reach: the longest lists, JSON oddities', (t) => {
  const big = (n: number) => Array.from({ length: n }, () => 'c 1:3 rw');
  for (const x of [
    { op: 'step.create', id: 1, job: 1, step: 0, devices: { allow: big(4096) } },
    { op: 'step.create', id: 1, job: 1, step: 0, devices: { allow: big(4097) } },
    { op: 'step.create', id: 1, job: 1, step: 0, devices: { gres: Array.from({ length: 1025 }, () => '/dev/nvidia0') } },
    { op: 'task.place', id: 1, job: 1, step: 0, tasks: Array.from({ length: 512 }, (_, i) => ({ task: i, pid: i + 1 })) },
    { op: 'task.place', id: 1, job: 1, step: 0, tasks: Array.from({ length: 513 }, (_, i) => ({ task: i, pid: i + 1 })) },
    JSON.parse('{"op":"hello","id":1,"__proto__":{"x":1}}'),
    JSON.parse('{"op":"destroy","id":1,"job":"7","constructor":1}'),
    [{ op: 'hello', id: 1 }],
    { op: 'hello' },
    null,
    'hello',
  ]) {
    t.notThrows(() => agree(x), JSON.stringify(x).slice(0, 80));
  }
});

test('a declined request gets the schema\'s own error, typed EINVAL', (t) => {
  const err = t.throws(() => parseRequest({ op: 'attach', id: 3, job: 1, step: 0, pid: 0 }), { instanceOf: AgentError });
  t.is(err!.code, 'EINVAL');
  t.is(err!.message, 'invalid request: pid: Too small: expected number to be >=1');
  const unknown = t.throws(() => parseRequest({ op: 'destroy', id: 3, job: 1, color: 'red' }), { instanceOf: AgentError });
  t.is(unknown!.message, 'invalid request: request: unknown field(s) color');
  t.deepEqual(parseRequest({ op: 'step.create', id: 'a', job: 12, step: 'batch' }), { op: 'step.create', id: 'a', job: '12', step: 'batch' });
});
