/**
 * The one inotify fd (src/cgroupfs/watch.ts) and the tree's watcher on it
 * (src/steps/events.ts), in this process, on real cgroups: changes of
 * cgroup.events are delivered, a removed listener hears nothing more, a file
 * of a removed directory is unwatched cleanly, and the watcher's events come out.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Inotify, inotify } from '../../src/cgroupfs/watch.js';
import { TreeWatcher } from '../../src/steps/events.js';
import { TreePaths } from '../../src/steps/names.js';
import type { AgentEvent } from '../../src/rpc/protocol.js';
import { makeTestRoot, removeTestRoot } from '../helpers/cgroup.js';
import { REPO, killPid, spawnSleeper, waitFor, sleep } from '../helpers/agent.js';

const ctx: { root: string; park: string } = {} as any;

test.before(() => {
  ctx.root = makeTestRoot('watch');
  ctx.park = path.join(ctx.root, 'park');
  fs.mkdirSync(ctx.park);
});
test.after.always(() => removeTestRoot(ctx.root));

const move = (dir: string, pid: number) => fs.writeFileSync(path.join(dir, 'cgroup.procs'), String(pid));

function cgroup(name: string): string {
  const d = path.join(ctx.root, name);
  fs.mkdirSync(d);
  return d;
}

test.serial('a change of cgroup.events reaches its listener; a removed listener hears nothing; the other one still does', async (t) => {
  const dir = cgroup('a');
  const p = spawnSleeper();
  t.teardown(() => killPid(p.pid));
  const ino = new Inotify();
  t.teardown(() => ino.close());
  const seen = { one: 0, two: 0 };
  const one = { changed: () => seen.one++ };
  const two = { changed: () => seen.two++ };
  const file = path.join(dir, 'cgroup.events');
  const wd = ino.add(file, one);
  t.is(ino.add(file, two), wd, 'one kernel watch per file');
  move(dir, p.pid!);
  await waitFor(() => seen.one > 0 && seen.two > 0, 3000, 'populated 1 notice');
  ino.remove(wd, one);
  const before = seen.one;
  await sleep(30); // past the kernel's 10 ms notice rate limit
  move(ctx.park, p.pid!);
  await waitFor(() => seen.two > 1, 3000, 'populated 0 notice');
  t.is(seen.one, before, 'the removed listener was not called');
  t.is(ino.size, 1);
  ino.remove(wd, two);
  t.is(ino.size, 0);
  fs.rmdirSync(dir);
});

test.serial('a watched file whose directory was removed is unwatched without error, and its watch goes', async (t) => {
  const dir = cgroup('b');
  const size = inotify().size;
  const l = { changed: () => undefined };
  const wd = inotify().add(path.join(dir, 'cgroup.events'), l);
  t.is(inotify().size, size + 1);
  fs.rmdirSync(dir);
  await sleep(20);
  t.notThrows(() => inotify().remove(wd, l));
  t.is(inotify().size, size);
});

test.serial('watching a file that does not exist is a typed ENOENT', (t) => {
  const err = t.throws(() => inotify().add(path.join(ctx.root, 'nope', 'cgroup.events'), { changed: () => undefined }));
  t.is((err as { errno?: string }).errno, 'ENOENT');
  t.regex(err!.message, /inotify_add_watch/);
});

test.serial('the tree watcher publishes task.empty, step.empty and job.empty, and a final read at unwatch catches a late change', async (t) => {
  const paths = new TreePaths(ctx.root);
  const job = cgroup('job_7');
  const step = paths.step('7', '0');
  const task = paths.leaf('7', '0', { task: 0 });
  fs.mkdirSync(step);
  fs.mkdirSync(path.dirname(task));
  fs.mkdirSync(task);
  const w = new TreeWatcher(paths);
  t.teardown(() => w.close());
  const events: AgentEvent[] = [];
  w.on('event', (e: AgentEvent) => events.push(e));
  w.watchDir(job, { job: '7' }, false, true);
  w.watchDir(step, { job: '7', step: '0' }, false, true);
  w.watchDir(task, { job: '7', step: '0', task: '0' }, false, true);
  t.is(w.watchedFiles, 3);
  const p = spawnSleeper();
  t.teardown(() => killPid(p.pid));
  move(task, p.pid!);
  await sleep(50);
  move(ctx.park, p.pid!);
  await waitFor(() => events.length >= 3, 3000, 'three empty events');
  t.deepEqual(events.map((e) => e.event).sort(), ['job.empty', 'step.empty', 'task.empty']);
  t.true(events.every((e) => e.job === '7'));
  t.is(events.find((e) => e.event === 'task.empty')?.task, '0');

  // Watched while populated (the first read sees it), emptied, unwatched in the same turn of the
  // event loop: no notice can have been handled, the last read publishes the change.
  w.unwatchDir(job, '7');
  t.is(w.watchedFiles, 0);
  move(task, p.pid!);
  w.watchDir(job, { job: '7' });
  events.length = 0;
  move(ctx.park, p.pid!);
  w.unwatchDir(job, '7');
  t.deepEqual(events.map((e) => e.event), ['job.empty']);
  t.is(w.watchedFiles, 0);
  for (const d of [task, path.dirname(task), step, job]) fs.rmdirSync(d);
});

// A process whose only handle is the unreferenced inotify poll and a far timer: a notice's callback
// must run the microtasks and next ticks it queues at once (as every callback from the loop does),
// or an agent's writes to event subscribers would wait for whatever wakes it next.
const FLUSH = `
const { inotify } = await import(process.argv[1]);
const far = setTimeout(() => { console.log('late'); process.exit(1); }, 4000);
inotify().add(process.argv[2], { changed: () => void Promise.resolve().then(() => process.nextTick(() => { clearTimeout(far); console.log('flushed'); process.exit(0); })) });
console.log('ready');
`;

test.serial("a notice's callback runs the microtasks and next ticks it queues at once, with nothing else to wake the process", async (t) => {
  const dir = cgroup('flush');
  const child = spawn(process.execPath, ['--input-type=module', '-e', FLUSH, path.join(REPO, 'dist/cgroupfs/watch.js'), path.join(dir, 'cgroup.events')], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => killPid(child.pid));
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  const exited = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
  await waitFor(() => out.includes('ready'), 20000, 'the watching process');
  fs.writeFileSync(path.join(dir, 'cgroup.freeze'), '1'); // an empty cgroup is frozen at once: one notice
  t.is(await exited, 0, out);
  t.regex(out, /flushed/);
  fs.rmdirSync(dir);
});
