/**
 * A corpus of malformed requests for the hostile-input tests: each entry is a
 * raw line (without its newline) that must get a typed error, never a crash.
 */
const ops = ['status', 'list', 'job.create', 'step.create', 'attach', 'task.place', 'stats', 'signal', 'freeze', 'thaw', 'destroy', 'devices.set', 'events', 'hello'];
const badIds: unknown[] = ['', '0', '-1', '../1', '1/2', '/etc', '1\u0000', 'job_1', '１', '1e3', '0x10', ' 7', '7 ', 4294967295, 1e308, -0.5, NaN, null, true, [], {}, '99999999999999999999'];
const badSteps: unknown[] = ['..', 'batch/..', 'BATCH', 'x', '-3', 1.5, '', '00', null, [1], { a: 1 }];
const badPids: unknown[] = [0, -1, 1.5, '12', 2 ** 40, null, 'self', []];
const badLimits: unknown[] = [{ memory: -1 }, { memory: '1G' }, { cpus: '0-' }, { cpus: 'a' }, { pids: 0 }, { pids: 2 ** 31 }, { cpuMax: 'lots' }, { cpuWeight: 0 }, { bogus: 1 }, [], 'x', { memory: 2 ** 60 }, { cpus: '0;rm -rf /' }];
const badDevices: unknown[] = [{ allow: 'c 1:3 r' }, { allow: [1] }, { policy: 'half' }, { deny: [''] }, { gres: [''] }, { extra: true }, 'all', { allow: Array(5000).fill('c 1:3 r') }];

export function corpus(): string[] {
  const lines: string[] = [];
  const j = (o: unknown) => JSON.stringify(o);
  // Not JSON, or not an object.
  lines.push('{', '}', '{"id":1', 'null', '[]', '"status"', '42', 'true', '{"id":1,"op":"status"', "{'id':1}", '{"id":1,"op":"status"}}', 'op=status', '\u0000', '{"id":1,\u0000"op":"status"}', '\ufeff{"id":1}');
  lines.push(j({}), j({ id: 1 }), j({ op: 'status' }), j({ id: 1, op: 'STATUS' }), j({ id: 1, op: 'nope' }), j({ id: 1, op: '' }), j({ id: 1, op: null }), j({ id: 1, op: ['status'] }), j({ id: { x: 1 }, op: 'status' }), j({ id: 'x'.repeat(500), op: 'status' }));
  lines.push(j({ id: 1, op: 'status', v: '9.0' }), j({ id: 1, op: 'status', v: 'one' }), j({ id: 1, op: 'status', v: 2 }), j({ id: 1, op: 'status', __proto__: { admin: true }, extra: 1 }), '{"id":1,"op":"status","__proto__":{"x":1}}', '{"id":1,"op":"status","constructor":{"prototype":{"x":1}}}');
  for (const op of ops) {
    lines.push(j({ id: 1, op, unknown: 1 }));
    for (const job of badIds) lines.push(j({ id: 1, op, job, step: 0, pid: 100, signal: 'TERM', devices: {} }));
  }
  for (const step of badSteps) for (const op of ['step.create', 'attach', 'task.place', 'destroy', 'freeze']) lines.push(j({ id: 1, op, job: 1, step, pid: 100 }));
  for (const pid of badPids) lines.push(j({ id: 1, op: 'attach', job: 1, step: 0, pid }), j({ id: 1, op: 'task.place', job: 1, step: 0, pid }));
  for (const limits of badLimits) lines.push(j({ id: 1, op: 'task.place', job: 1, step: 0, pid: 100, jobLimits: limits }), j({ id: 1, op: 'task.place', job: 1, step: 0, pid: 100, stepLimits: limits }));
  for (const devices of badDevices) lines.push(j({ id: 1, op: 'task.place', job: 1, step: 0, pid: 100, jobDevices: devices }), j({ id: 1, op: 'task.place', job: 1, step: 0, pid: 100, devices }));
  for (const owner of [-1, 1.5, '0', 2 ** 32, null]) lines.push(j({ id: 1, op: 'task.place', job: 1, step: 0, pid: 100, owner }));
  for (const limits of badLimits) lines.push(j({ id: 1, op: 'job.create', job: 1, limits }), j({ id: 1, op: 'step.create', job: 1, step: 0, limits }));
  for (const devices of badDevices) lines.push(j({ id: 1, op: 'job.create', job: 1, devices }));
  for (const signal of ['', 'NOPE', 0, 65, -9, 'SIG', 1.5, null]) lines.push(j({ id: 1, op: 'signal', job: 1, step: 0, signal }));
  lines.push(j({ id: 1, op: 'attach', job: 1, step: 0, pid: 100, task: 1, leaf: 'slurm' }));
  lines.push(j({ id: 1, op: 'attach', job: 1, step: 0, pid: 100, leaf: 'system' }));
  lines.push(j({ id: 1, op: 'destroy', job: 1, force: 'yes' }));
  return lines;
}
