/**
 * Options from the environment (CGSTEP_*; the command line wins, bad values
 * name the variable) and allocation discovery from SLURM_* for `cgstep run`.
 */
import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import os from 'node:os';
import fs from 'node:fs';
import path from 'node:path';
import { makeTestRoot, removeTestRoot, MOUNT } from '../helpers/cgroup.js';
import { CGSTEP, CGSTEPD, startAgent } from '../helpers/agent.js';

test('cgstepd: options from CGSTEP_*, the command line wins, a bad value names the variable', async (t) => {
  const root = makeTestRoot('env');
  t.teardown(() => removeTestRoot(root));
  const a = await startAgent({ root, args: ['--ignore-systemd'], env: { CGSTEP_NODE_NAME: 'fromenv', CGSTEP_LOG_LEVEL: 'debug' } });
  t.teardown(() => a.stop());
  t.true(fs.existsSync(path.join(root, 'system.slice', 'fromenv_slurmstepd.scope')));
  await a.stop();
  const b = await startAgent({ root, args: ['--ignore-systemd', '--node-name', 'fromflag'], env: { CGSTEP_NODE_NAME: 'fromenv' } });
  t.teardown(() => b.stop());
  t.regex(JSON.parse(b.cli(['--json', 'status']).stdout).scope, /fromflag_slurmstepd\.scope$/);
  const bad = spawnSync(process.execPath, [CGSTEPD], { env: { ...process.env, CGSTEP_LOG_LEVEL: 'bogus' }, encoding: 'utf8' });
  t.not(bad.status, 0);
  t.regex(bad.stderr, /from env 'CGSTEP_LOG_LEVEL' is invalid/);
  const badUid = spawnSync(process.execPath, [CGSTEPD, '--ignore-systemd'], { env: { ...process.env, CGSTEP_ALLOW_UID: '12,x' }, encoding: 'utf8' });
  t.regex(badUid.stderr, /CGSTEP_ALLOW_UID.*uid must be an integer/);
  const help = spawnSync(process.execPath, [CGSTEPD, '--help'], { encoding: 'utf8' }).stdout;
  for (const v of ['CGSTEP_SOCKET', 'CGSTEP_CGROUP_ROOT', 'CGSTEP_LOG_LEVEL', 'CGSTEP_ALLOW_UID', 'CGSTEP_METRICS']) t.regex(help.replace(/\s+/g, ' '), new RegExp(`env: ${v}`));
});

test('cgstep: CGSTEP_SOCKET, --socket wins; run takes JOB/STEP/task from SLURM_* with --verbose saying so', async (t) => {
  const root = makeTestRoot('env2');
  t.teardown(() => removeTestRoot(root));
  const a = await startAgent({ root, args: ['--ignore-systemd'] });
  t.teardown(() => a.stop());
  const run = (args: string[], env: Record<string, string>) => spawnSync(process.execPath, [CGSTEP, ...args], { env: { ...process.env, ...env }, encoding: 'utf8' });
  t.is(run(['status'], { CGSTEP_SOCKET: a.socket }).status, 0);
  const wins = run(['--socket', a.socket, 'status'], { CGSTEP_SOCKET: '/nonexistent/sock' });
  t.is(wins.status, 0, wins.stderr);
  const missing = run(['status'], { CGSTEP_SOCKET: '/nonexistent/sock' });
  t.regex(missing.stderr, /cannot connect to cgstepd at \/nonexistent\/sock.*Is cgstepd running/);
  const slurm = { CGSTEP_SOCKET: a.socket, SLURM_JOB_ID: '44', SLURM_STEP_ID: '2', SLURM_PROCID: '1' };
  const r = run(['run', '--verbose', '--', 'cat', '/proc/self/cgroup'], slurm);
  t.is(r.status, 0, r.stderr);
  t.regex(r.stderr, /job 44 step 2 task 1 \(SLURM_JOB_ID=44, SLURM_STEP_ID=2, SLURM_PROCID=1\)/);
  const scope = path.join(root, 'system.slice', 'slurmstepd.scope');
  t.true(r.stdout.includes(`0::/${path.relative(MOUNT, path.join(scope, 'job_44/step_2/user/task_1'))}`));
  const explicit = run(['run', '45', 'batch', '--task', '3', '--', 'cat', '/proc/self/cgroup'], slurm);
  t.regex(explicit.stdout, /job_45\/step_batch\/user\/task_3/);
  const none = run(['run', '--', 'true'], { CGSTEP_SOCKET: a.socket, SLURM_JOB_ID: '' });
  t.regex(none.stderr, /not inside a Slurm allocation/);
  t.regex(run(['run', '46', '--', 'true'], { CGSTEP_SOCKET: a.socket }).stderr, /expected JOB STEP before --/);
  t.is(a.cli(['destroy', '44']).code, 0);
  t.is(a.cli(['destroy', '45']).code, 0);
});

test('cgstep --wait: a client started before the agent connects once it is up; without an agent it gives up and says so', async (t) => {
  const root = makeTestRoot('wait');
  t.teardown(() => removeTestRoot(root));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-wait-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const socket = path.join(dir, 's.sock');
  const early = spawn(process.execPath, [CGSTEP, '--socket', socket, '--wait', '15000', 'status'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  early.stdout!.on('data', (d) => (out += d));
  const done = new Promise<number | null>((r) => early.once('exit', r));
  await new Promise((r) => setTimeout(r, 700));
  t.is(early.exitCode, null, 'still waiting for the agent');
  const a = await startAgent({ root, socket, args: ['--ignore-systemd'] });
  t.teardown(() => a.stop());
  t.is(await done, 0);
  t.regex(out, /mkdir mode/);
  const gaveUp = spawnSync(process.execPath, [CGSTEP, '--socket', path.join(dir, 'none.sock'), '--wait', '300', 'status'], { encoding: 'utf8' });
  t.is(gaveUp.status, 1);
  t.regex(gaveUp.stderr, /gave up waiting 300 ms for the agent socket/);
});
