/** cgstep top's arithmetic: CPU % from two samples, sorting, the table. */
import test from 'ava';
import { renderTop, sortRows, topRows } from '../../src/bin/top.js';

const list = (cpu7: number, cpu8: number) => ({
  jobs: [
    { job: '7', usage: { cpuUsec: cpu7, memoryCurrent: 2 ** 30, pids: 3, oomKills: 1 }, limits: { memoryMax: 4 * 2 ** 30, pidsMax: 100 }, steps: [{ step: '0', tasks: ['task_0', 'task_1'], frozen: false, usage: { cpuUsec: cpu7, memoryCurrent: 2 ** 30, pids: 3, oomKills: 1 }, limits: { memoryMax: null, pidsMax: null } }] },
    { job: '8', usage: { cpuUsec: cpu8, memoryCurrent: null, pids: null, oomKills: null }, limits: {}, steps: [{ step: 'batch', tasks: [], frozen: true, usage: { cpuUsec: cpu8 }, limits: {} }] },
  ],
});

test('top: CPU % of one CPU from the change in usage over the elapsed time; none on the first sample', (t) => {
  const first = topRows(list(1_000_000, 0), null, 0);
  t.true(first.rows.every((r) => r.cpuPercent === null));
  const second = topRows(list(1_500_000, 2_000_000), first.sample, 1000);
  const job7 = second.rows.find((r) => r.job === '7' && r.step === null)!;
  t.is(job7.cpuPercent, 50);
  t.is(second.rows.find((r) => r.job === '8' && r.step === 'batch')!.cpuPercent, 200);
  t.is(second.rows.find((r) => r.job === '8' && r.step === null)!.frozen, true, 'a job whose steps are all frozen is frozen');
  t.deepEqual(sortRows(second.rows, 'cpu').map((r) => `${r.job}.${r.step}`), ['8.null', '8.batch', '7.null', '7.0']);
  t.deepEqual(sortRows(second.rows, 'id').map((r) => `${r.job}.${r.step}`), ['7.null', '7.0', '8.null', '8.batch']);
  t.deepEqual(sortRows(second.rows, 'memory').map((r) => r.job)[0], '7');
  const table = renderTop(sortRows(second.rows, 'id'), 'title').split('\n');
  t.is(table[0], 'title');
  t.regex(table[1], /^JOB +STEP +TASKS +%CPU +MEMORY +MEM\.MAX +PIDS +PIDS\.MAX +OOM +FROZEN$/);
  t.regex(table[2], /^7 +- +- +50\.0 +1G +4G +3 +100 +1 +no$/);
  t.regex(table[3], /^7 +0 +2 +50\.0 +1G +max +3 +max +1 +no$/);
  t.regex(table[5], /^8 +batch +0 +200\.0 +- +- +- +- +- +yes$/);
});
