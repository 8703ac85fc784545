/**
 * Prometheus metrics against a real agent: scraped over HTTP, parsed with a
 * real text-format parser, values equal to the cgroup files.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
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
  const url = `http://127.0.0.1:${port}/metrics`;
  const res = await fetch(url);
  t.is(res.status, 200);
  // fetch asks for gzip, as Prometheus does; curl --compressed reads the body whole too
  // (one gzip member); a plain GET gets the text; all three carry the same series.
  t.is(res.headers.get('content-encoding'), 'gzip');
  const text = await res.text();
  const families = parsePrometheusTextFormat(text);
  const plain = await new Promise<{ enc: string | undefined; body: string }>((resolve, reject) =>
    http.get(url, { agent: false }, (r) => {
      let body = '';
      r.on('data', (d) => (body += d)).on('end', () => resolve({ enc: r.headers['content-encoding'], body }));
    }).on('error', reject),
  );
  t.is(plain.enc, undefined);
  const curl = spawnSync('curl', ['-sS', '--compressed', url], { encoding: 'utf8' });
  t.is(curl.status, 0, curl.stderr);
  const series = (body: string) => body.split('\n').filter((l) => l && !l.startsWith('#')).map((l) => l.replace(/ [^ ]+$/, '')).sort();
  t.deepEqual(series(curl.stdout), series(text));
  t.deepEqual(series(plain.body).filter((l) => !l.startsWith('cgstep_request')), series(text).filter((l) => !l.startsWith('cgstep_request')));
  const fam = (name: string) => families.find((f: any) => f.name === name);
  const scope = path.join(root, 'system.slice', 'm1_slurmstepd.scope');
  const cpuStat = (dir: string, key: string) => Number(new RegExp(`^${key} (\\d+)$`, 'm').exec(fs.readFileSync(path.join(dir, 'cpu.stat'), 'utf8'))![1]);
  const step0 = fam('cgstep_step_cpu_user_seconds_total').metrics.find((m: any) => m.labels.jobid === '7' && m.labels.step === '0');
  t.is(Number(step0.value), cpuStat(path.join(scope, 'job_7', 'step_0'), 'user_usec') / 1e6);
  t.is(step0.labels.node, 'm1');
  t.true(Number(step0.value) > 0.1);
  const job = fam('cgstep_job_cpu_system_seconds_total').metrics.find((m: any) => m.labels.jobid === '7');
  t.is(Number(job.value), cpuStat(path.join(scope, 'job_7'), 'system_usec') / 1e6);
  t.deepEqual(fam('cgstep_step_cpu_user_seconds_total').metrics.map((m: any) => m.labels.step).sort(), ['0', 'batch']);
  t.is(fam('cgstep_task_cpu_user_seconds_total'), undefined, 'no per-task series by default');
  t.is(Number(fam('cgstep_jobs').metrics[0].value), 1);
  t.is(Number(fam('cgstep_steps').metrics[0].value), 2);
  const reqs = fam('cgstep_requests_total').metrics;
  t.true(Number(reqs.find((m: any) => m.labels.op === 'step.create').value) >= 1);
  t.truthy(fam('cgstep_request_duration_seconds'));
  t.truthy(fam('cgstep_agent_process_start_time_seconds'));
  // Memory is not available on this machine's cgroup2: the series is absent, not zero.
  t.is(fam('cgstep_step_memory_current_bytes').metrics.length, 0);
  // Prometheus conventions: a _total is a counter; no label named job or instance.
  t.is(fam('cgstep_step_cpu_user_seconds_total').type, 'COUNTER');
  t.is(fam('cgstep_job_oom_kills_total').type, 'COUNTER');
  t.is(fam('cgstep_step_io_read_bytes_total').type, 'COUNTER');
  for (const f of families) {
    if (f.name.endsWith('_total')) t.is(f.type, 'COUNTER', `${f.name} ${f.type}`);
    for (const m of f.metrics) t.false('job' in (m.labels ?? {}) || 'instance' in (m.labels ?? {}), f.name);
  }
  // Frozen state per step (from user/), and the snapshot's own figures.
  t.deepEqual(fam('cgstep_step_frozen').metrics.map((m: any) => [m.labels.step, m.value]).sort(), [['0', '0'], ['batch', '0']]);
  t.deepEqual(fam('cgstep_job_owner_info').metrics.map((m: any) => [m.labels.jobid, m.labels.uid]), [['7', '0']], 'the job made by root is owned by uid 0');
  t.truthy(fam('cgstep_metrics_snapshot_age_seconds'));
  t.truthy(fam('cgstep_metrics_refresh_longest_slice_seconds'));
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
  t.deepEqual(task.metrics.map((m: any) => [m.labels.jobid, m.labels.step, m.labels.task]), [['8', '1', '3']]);
  const root2 = makeTestRoot('metrics3');
  t.teardown(() => removeTestRoot(root2));
  const b = await startAgent({ root: root2, args: ['--ignore-systemd', '--metrics', 'nonsense'], expectExit: true });
  t.regex(b.log(), /--metrics: expected \[ADDR:\]PORT/);
});

test('metrics: scrapes come from a snapshot at most --metrics-max-age old; frozen steps show; a bearer token when asked; a Unix socket; connections bounded', async (t) => {
  const root = makeTestRoot('metrics4');
  t.teardown(() => removeTestRoot(root));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-metrics-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.writeFileSync(path.join(dir, 'token'), 's3cret\n', { mode: 0o600 });
  const sock = path.join(dir, 'metrics.sock');
  const a = await startAgent({ root, args: ['--ignore-systemd', '--metrics', `unix:${sock}`, '--metrics-token-file', path.join(dir, 'token'), '--metrics-max-age', '4', '--metrics-max-connections', '2'] });
  t.teardown(() => a.stop());
  await waitFor(() => /metrics served/.test(a.log()), 5000, 'metrics log line');
  t.is(fs.statSync(sock).mode & 0o777, 0o600, 'root only without --socket-group');
  const get = (headers: Record<string, string> = {}) =>
    new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = http.get({ socketPath: sock, path: '/metrics', headers, agent: false }, (res) => {
        let body = '';
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode!, body }));
      });
      req.on('error', reject);
    });
  t.is((await get()).status, 401);
  t.is((await get({ Authorization: 'Bearer wrong!' })).status, 401);
  const auth = { Authorization: 'Bearer s3cret' };
  t.is(a.cli(['step', 'create', '21', '0']).code, 0);
  const first = parsePrometheusTextFormat((await get(auth)).body);
  const jobs = (fs: any[]) => fs.find((f: any) => f.name === 'cgstep_job_cpu_usage_seconds_total').metrics.map((m: any) => m.labels.jobid);
  t.deepEqual(jobs(first), ['21']);
  // A new job is not in the kept snapshot until it is older than --metrics-max-age.
  const c = await a.client();
  t.teardown(() => c.close());
  await c.request('step.create', { job: 22, step: 0 });
  await c.request('freeze', { job: 22, step: 0 });
  const cached = parsePrometheusTextFormat((await get(auth)).body);
  t.deepEqual(jobs(cached), ['21'], 'served from the snapshot');
  await new Promise((r) => setTimeout(r, 4300));
  const fresh = parsePrometheusTextFormat((await get(auth)).body);
  t.deepEqual(jobs(fresh).sort(), ['21', '22']);
  const frozen = fresh.find((f: any) => f.name === 'cgstep_step_frozen').metrics.find((m: any) => m.labels.jobid === '22');
  t.is(frozen.value, '1');
  t.true(Number(fresh.find((f: any) => f.name === 'cgstep_metrics_snapshot_age_seconds').metrics[0].value) <= 4);
  // Bounded connections: two idle ones are held, a third is refused, the agent answers root.
  const idle = await Promise.all([0, 1].map(() => new Promise<net.Socket>((r) => { const s = net.connect(sock, () => r(s)); s.on('error', () => {}); })));
  t.teardown(() => idle.forEach((s) => s.destroy()));
  await new Promise((r) => setTimeout(r, 200));
  const third = await get(auth).then((r) => r.status, () => 'refused');
  t.is(third, 'refused');
  t.is(a.cli(['status']).code, 0);
  idle.forEach((s) => s.destroy());
  await waitFor(async () => (await get(auth).then((r) => r.status, () => 0)) === 200, 10000, 'a slot again');
});
