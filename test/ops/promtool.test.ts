/**
 * /metrics against Prometheus's own linter: `promtool check metrics` on a real
 * scrape (jobs, steps, tasks, the agent's series) prints nothing, and the
 * shipped alert rules in contrib/ pass `promtool check rules`. promtool comes
 * from Debian's prometheus package, installed like the other harness packages.
 */
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { makeTestRoot, removeTestRoot } from '../helpers/cgroup.js';
import { REPO, startAgent, waitFor } from '../helpers/agent.js';
import { aptInstall } from '../helpers/apt.js';
import { gate } from '../helpers/gate.js';
import { which } from '../helpers/which.js';

function promtoolSupport(): { ok: boolean; reason?: string | null } {
  if (which('promtool')) return { ok: true };
  const why = aptInstall(['prometheus'], { noRecommends: true });
  return why ? { ok: false, reason: why } : which('promtool') ? { ok: true } : { ok: false, reason: 'the prometheus package has no promtool' };
}

const { test } = gate('promtool', promtoolSupport(), import.meta.url);

test('promtool check metrics finds nothing wrong in a scrape with jobs, steps and tasks', async (t) => {
  const root = makeTestRoot('promtool');
  t.teardown(() => removeTestRoot(root));
  const a = await startAgent({ root, args: ['--ignore-systemd', '--node-name', 'p1', '--metrics', '127.0.0.1:0', '--metrics-tasks'] });
  t.teardown(() => a.stop());
  await waitFor(() => /metrics served/.test(a.log()), 5000, 'metrics log line');
  const port = a.logLines().find((l) => l.msg === 'metrics served at /metrics').port;
  t.is(a.cli(['run', '5', '0', '--task', '1', '--', 'true']).code, 0);
  t.is(a.cli(['step', 'create', '5', 'batch']).code, 0);
  t.is(a.cli(['stats', '404']).code, 1, 'an error, so the error counter has a series');
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  t.regex(text, /^cgstep_task_cpu_usage_seconds_total\{jobid="5",step="0",task="1",node="p1"\} /m);
  const r = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
  t.is(r.stdout + r.stderr, '', 'promtool has no complaint');
  t.is(r.status, 0);
});

test('promtool check rules accepts the alert rules in contrib/', (t) => {
  const r = spawnSync('promtool', ['check', 'rules', path.join(REPO, 'contrib/prometheus/cgstep-alerts.yml')], { encoding: 'utf8' });
  t.is(r.status, 0, r.stdout + r.stderr);
  t.regex(r.stdout, /SUCCESS: \d+ rules found/);
});
