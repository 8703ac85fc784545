/**
 * metrics' pure parts: the chunk writer a snapshot renders into (lines across
 * 64 KiB boundaries, multi-byte label values, a line longer than a chunk) and
 * the agent's own series, parsed by a real text-format parser.
 */
import test from 'ava';
import parsePrometheusTextFormat from 'parse-prometheus-text-format';
import { AgentSeries } from '../../src/metrics/agent.js';
import { ChunkWriter } from '../../src/metrics/snapshot.js';

test('the chunk writer gives back exactly the text written, in chunks of at most 64 KiB, whatever the line lengths', (t) => {
  const w = new ChunkWriter();
  const lines: string[] = [];
  for (let i = 0; i < 5000; i++) lines.push(`cgstep_step_cpu_user_seconds_total{jobid="${i}",step="0",node="nœud-ü"} ${i / 7}\n`);
  lines.push(`x{l="${'é'.repeat(70_000)}"} 1\n`); // longer than a chunk
  lines.push('last 2\n');
  for (const l of lines) w.write(l);
  w.flush();
  const all = Buffer.concat(w.chunks);
  t.is(all.toString('utf8'), lines.join(''));
  t.is(w.bytes, all.length);
  t.true(w.chunks.length > 5);
  t.true(w.chunks.filter((c) => c.length > 64 * 1024).length === 1, 'only the oversized line has a chunk of its own above 64 KiB');
  w.flush();
  t.is(Buffer.concat(w.chunks).length, all.length, 'a second flush adds nothing');
});

test('the agent series parse: cumulative buckets, counts, the node label escaped, no suffix _total on a gauge', (t) => {
  const a = new AgentSeries('node="n\\"1"');
  t.teardown(() => a.close());
  for (const s of [0.00005, 0.0003, 0.002, 2, 10]) a.observe('list', s);
  a.observe('stats', 0.001, 'ENOENT');
  const text = a.render([{ name: 'cgstep_jobs', help: 'Live jobs', value: 3 }]);
  const fams = parsePrometheusTextFormat(text);
  const fam = (n: string) => fams.find((f: any) => f.name === n);
  t.is(fam('cgstep_request_duration_seconds').type, 'HISTOGRAM');
  // The parser merges a histogram's label sets, so the buckets are read from the lines.
  const bucket = (le: string) => Number(new RegExp(`^cgstep_request_duration_seconds_bucket\\{le="${le.replace('+', '\\+')}",op="list",[^}]*\\} (\\S+)$`, 'm').exec(text)![1]);
  t.deepEqual(['0.0001', '0.001', '5', '+Inf'].map(bucket), [1, 2, 4, 5]);
  t.regex(text, /^cgstep_request_duration_seconds_count\{op="list",[^}]*\} 5$/m);
  t.is(fam('cgstep_requests_total').metrics.find((m: any) => m.labels.op === 'stats').value, '1');
  t.deepEqual(fam('cgstep_errors_total').metrics.map((m: any) => [m.labels.code, m.value]), [['ENOENT', '1']]);
  t.is(fam('cgstep_jobs').metrics[0].value, '3');
  t.is(fam('cgstep_jobs').metrics[0].labels.node, 'n"1');
  t.true(Number(fam('cgstep_agent_process_start_time_seconds').metrics[0].value) > 1e9);
  for (const f of fams) if (f.name.endsWith('_total')) t.is(f.type, 'COUNTER', f.name);
});
