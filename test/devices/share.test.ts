/**
 * Loaded programs shared between directories (the controller's shareLoaded):
 * the same policy on two directories is one load and one program that
 * confines both; a different policy is its own program; detaching from one
 * directory leaves the other confined; an update of a directory replaces only
 * that directory's program; close() lets go of the kept programs, which the
 * kernel frees once no directory has them. Checked with the kernel's own
 * numbers (BPF_PROG_QUERY, the loaded programs by this file's unique name) and
 * a prober's open() of fake device nodes.
 */
import test from 'ava';
import fs from 'node:fs';
import { DeviceController, loadedPrograms, parseRule, type RuleSet } from '../../src/devices/index.js';
import { gate } from '../helpers/gate.js';
import { Cgroups, Prober, kernelSkipReason, memLogger, sleep, standardNodes, uniqueProgName, waitLoaded, type DevNodes } from './helpers.js';

const skip = kernelSkipReason();
const { test: ktest } = gate('BPF device programs', { ok: !skip, reason: skip }, import.meta.url);

let cg: Cgroups;
let nodes: DevNodes;
test.before(() => {
  if (skip) return;
  cg = new Cgroups('share');
  nodes = standardNodes();
});
test.after.always(async () => {
  if (skip) return;
  nodes?.cleanup();
  await cg?.cleanup();
});

const onlyGpu0: RuleSet = { default: 'deny', rules: [parseRule('c 195:0 rw', true)] };
const onlyGpu1: RuleSet = { default: 'deny', rules: [parseRule('c 195:1 rw', true)] };

/** A controller whose probe's programs are gone already (so the counts below are this test's). */
async function controller(name: string, mem: ReturnType<typeof memLogger>, shareLoaded?: number): Promise<DeviceController> {
  const ctl = new DeviceController(mem.log, { progName: name, scratchParent: cg.root, ...(shareLoaded ? { shareLoaded } : {}) });
  ctl.probe();
  await waitLoaded(name, 0);
  return ctl;
}

/** rmdir, retried while the kernel still counts a just-killed process in it. */
async function rmdir(dir: string): Promise<void> {
  for (let i = 0; ; i++) {
    try {
      fs.rmdirSync(dir);
      return;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EBUSY' || i > 100) throw err;
      await sleep(20);
    }
  }
}

ktest('the same policy on two new directories is one load; each directory is confined by it, and only by its own', async (t) => {
  const name = uniqueProgName();
  const mem = memLogger();
  const ctl = await controller(name, mem, 4);
  const [a, b, c] = ['a', 'b', 'c'].map((d) => cg.dir(d));
  const ra = ctl.apply(a, onlyGpu0, { fresh: true });
  const rb = ctl.apply(b, onlyGpu0, { fresh: true });
  const rc = ctl.apply(c, onlyGpu1, { fresh: true });
  t.is(rb.progId, ra.progId, 'one program for the one policy');
  t.not(rc.progId, ra.progId);
  t.is(mem.lines().filter((l) => l.msg === 'device program loaded').length, 2);
  t.is(mem.lines().filter((l) => l.msg === 'device program attached').length, 3, 'every attach is in the log');
  for (const [dir, id] of [[a, ra.progId], [b, ra.progId], [c, rc.progId]] as const) t.deepEqual(ctl.query(dir), { progIds: [id], ours: [id] });
  t.is(loadedPrograms(name).length, 2);

  const pb = cg.track(await Prober.start());
  await pb.moveTo(b);
  t.is(await pb.open(nodes.paths.nvidia0, 'r'), 'ENXIO', 'allowed: reaches the (missing) driver');
  t.is(await pb.open(nodes.paths.nvidia1, 'r'), 'EPERM');

  // Detaching from a leaves b confined; an update of b leaves c and a's policy alone.
  t.deepEqual(ctl.detach(a).detached, [ra.progId]);
  t.is(await pb.open(nodes.paths.nvidia1, 'r'), 'EPERM', 'still confined after the detach from another directory');
  const rb2 = ctl.apply(b, onlyGpu1);
  t.is(rb2.progId, rc.progId, "b now runs c's program");
  t.is(await pb.open(nodes.paths.nvidia0, 'r'), 'EPERM');
  t.is(await pb.open(nodes.paths.nvidia1, 'r'), 'ENXIO');
  t.deepEqual(ctl.query(c), { progIds: [rc.progId], ours: [rc.progId] });
  await pb.kill();

  // Kept programs are let go at close(); attached ones stay loaded until their directories go.
  ctl.close();
  t.is(await waitLoaded(name, 1), 1, "the first program is on no directory and was only kept: freed at close()");
  for (const d of [a, b, c]) await rmdir(d);
  t.is(await waitLoaded(name, 0), 0, 'every program freed with its directories');
});

ktest('without shareLoaded each directory gets its own load (the controller as before)', async (t) => {
  const name = uniqueProgName();
  const mem = memLogger();
  const ctl = await controller(name, mem);
  const [a, b] = ['n1', 'n2'].map((d) => cg.dir(d));
  t.not(ctl.apply(a, onlyGpu0, { fresh: true }).progId, ctl.apply(b, onlyGpu0, { fresh: true }).progId);
  t.is(mem.lines().filter((l) => l.msg === 'device program loaded').length, 2);
  for (const d of [a, b]) await rmdir(d);
});

ktest('at most shareLoaded programs are kept: the least recently used is let go first', async (t) => {
  const name = uniqueProgName();
  const mem = memLogger();
  const ctl = await controller(name, mem, 2);
  const policy = (i: number): RuleSet => ({ default: 'deny', rules: [parseRule(`c 195:${i} rw`, true)] });
  const dirs: string[] = [];
  const ids: number[] = [];
  for (let i = 0; i < 4; i++) {
    const d = cg.dir(`lru${i}`);
    dirs.push(d);
    ids.push(ctl.apply(d, policy(i), { fresh: true }).progId);
    ctl.detach(d);
  }
  t.is(await waitLoaded(name, 2), 2, 'two kept, the other two freed');
  t.deepEqual(loadedPrograms(name).map((p) => p.id).sort((x, y) => x - y), ids.slice(2).sort((x, y) => x - y));
  ctl.close();
  t.is(await waitLoaded(name, 0), 0);
  for (const d of dirs) await rmdir(d);
});
