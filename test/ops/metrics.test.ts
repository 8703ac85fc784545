/**
 * Prometheus metrics against a real agent: scraped over HTTP, parsed with a
 * real text-format parser, values equal to the cgroup files.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import parsePrometheusTextFormat from 'parse-prometheus-text-format';
import { makeTestRoot, removeTestRoot } from '../helpers/cgroup.js';
import { startAgent, waitFor } from '../helpers/agent.js';

test('metrics: per job and step series equal the cgroup files; agent counters; no task labels by default', async (t) => {
  const root = makeTestRoot('metrics');
  const a = await startAgent({ root, args: ['--ignore-systemd', '--node-name', 'm1', '--metrics', '127.0.0.1:0'] });
  t.teardown(async () => {
    await a.stop();
    await removeTestRoot(root);
  });
  await waitFor(() => /metrics served/.test(a.log()), 5000, 'metrics log line');
  const port = a.logLines().find((l) => l.msg === 'metrics served at /metrics').port;
  t.is(a.cli(['run', '7', '0', '--', process.execPath, '-e', 'const e=Date.now()+200;while(Date.now()<e);']).code, 0);
  t.is(a.cli(['step', 'create', '7', 'batch']).code, 0);
  t.is(a.cli(['status']).code, 0);
  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  t.is(res.status, 200);
  const families = parsePrometheusTextFormat(await res.text());
  const fam = (name: string) => families.find((f: any) => f.name === name);
  const scope = path.join(root, 'system.slice', 'm1_slurmstepd.scope');
  const cpuStat = (dir: string, key: string) => Number(new RegExp(`^${key} (\\d+)$`, 'm').exec(fs.readFileSync(path.join(dir, 'cpu.stat'), 'utf8'))![1]);
  const step0 = fam('cgstep_step_cpu_user_seconds_total').metrics.find((m: any) => m.labels.job === '7' && m.labels.step === '0');
  t.is(Number(step0.value), cpuStat(path.join(scope, 'job_7', 'step_0'), 'user_usec') / 1e6);
  t.is(step0.labels.node, 'm1');
  t.true(Number(step0.value) > 0.1);
  const job = fam('cgstep_job_cpu_system_seconds_total').metrics.find((m: any) => m.labels.job === '7');
  t.is(Number(job.value), cpuStat(path.join(scope, 'job_7'), 'system_usec') / 1e6);
  t.deepEqual(fam('cgstep_step_cpu_user_seconds_total').metrics.map((m: any) => m.labels.step).sort(), ['0', 'batch']);
  t.is(fam('cgstep_task_cpu_user_seconds_total'), undefined, 'no per-task series by default');
  t.is(Number(fam('cgstep_jobs').metrics[0].value), 1);
  t.is(Number(fam('cgstep_steps').metrics[0].value), 2);
  const reqs = fam('cgstep_requests_total').metrics;
  t.true(Number(reqs.find((m: any) => m.labels.op === 'step.create').value) >= 2);
  t.truthy(fam('cgstep_request_duration_seconds'));
  t.truthy(fam('cgstep_agent_process_start_time_seconds'));
  // Memory is not available on this machine's cgroup2: the series is absent, not zero.
  t.is(fam('cgstep_step_memory_current_bytes').metrics.length, 0);
  t.is((await fetch(`http://127.0.0.1:${port}/nope`)).status, 404);
});

test('metrics: --metrics-tasks adds task series; a bad address is a clear start-up error', async (t) => {
  const root = makeTestRoot('metrics2');
  const a = await startAgent({ root, args: ['--ignore-systemd', '--metrics', '127.0.0.1:0', '--metrics-tasks'] });
  t.teardown(async () => {
    await a.stop();
    await removeTestRoot(root);
  });
  await waitFor(() => /metrics served/.test(a.log()), 5000, 'metrics log line');
  const port = a.logLines().find((l) => l.msg === 'metrics served at /metrics').port;
  t.is(a.cli(['run', '8', '1', '--task', '3', '--', 'true']).code, 0);
  const families = parsePrometheusTextFormat(await (await fetch(`http://127.0.0.1:${port}/metrics`)).text());
  const task = families.find((f: any) => f.name === 'cgstep_task_cpu_user_seconds_total');
  t.deepEqual(task.metrics.map((m: any) => [m.labels.job, m.labels.step, m.labels.task]), [['8', '1', '3']]);
  const root2 = makeTestRoot('metrics3');
  t.teardown(() => removeTestRoot(root2));
  const b = await startAgent({ root: root2, args: ['--ignore-systemd', '--metrics', 'nonsense'], expectExit: true });
  t.regex(b.log(), /--metrics: expected \[ADDR:\]PORT/);
});
