/**
 * No program, attachment or fd leaks over many create/update/destroy cycles,
 * counted with the kernel's own numbers: BPF_PROG_QUERY on each directory and
 * a BPF_PROG_GET_NEXT_ID walk for loaded programs carrying this file's unique
 * program name (so other engineers' programs on the machine do not count).
 */
import test from 'ava';
import fs from 'node:fs';
import { DeviceController, loadedPrograms, parseRule, type RuleSet } from '../../src/devices/index.js';
import { gate } from '../helpers/gate.js';
import { Cgroups, kernelSkipReason, memLogger, uniqueProgName, waitLoaded } from './helpers.js';

const skip = kernelSkipReason();
const { test: ktest } = gate('BPF device programs', { ok: !skip, reason: skip }, import.meta.url);

let cg: Cgroups;
test.before(() => {
  if (!skip) cg = new Cgroups('leak');
});
test.after.always(async () => {
  if (!skip) await cg?.cleanup();
});

const policy = (i: number): RuleSet => ({
  default: i % 3 === 0 ? 'deny' : 'allow',
  rules: [parseRule(`c 195:${i % 7} rw`, i % 2 === 0), parseRule(`c 1:* r`, true), parseRule(`b 7:${i % 5} rwm`, false)],
});

const fdCount = () => fs.readdirSync('/proc/self/fd').length;

for (const replace of [true, false]) {
  const cycles = replace ? 500 : 200;
  ktest(`${cycles} create/apply/update/destroy cycles (${replace ? 'BPF_F_REPLACE' : 'attach, then detach'}) leave no program, attachment or fd`, async (t) => {
    const name = uniqueProgName();
    const mem = memLogger();
    const ctl = new DeviceController(mem.log, { progName: name, scratchParent: cg.root, replace });
    t.is(ctl.probe().replace, replace);
    t.is(await waitLoaded(name, 0), 0);
    const fds = fdCount();
    const started = Date.now();
    for (let i = 0; i < cycles; i++) {
      const dir = cg.dir(`c${replace ? 'r' : 'a'}${i}`);
      const a = ctl.apply(dir, policy(i));
      const b = ctl.apply(dir, policy(i + 1));
      const q = ctl.query(dir);
      if (q.progIds.length !== 1 || q.ours[0] !== b.progId) t.fail(`cycle ${i}: ${JSON.stringify(q)}`);
      if (replace ? b.replacedProgId !== a.progId : b.detachedProgIds[0] !== a.progId) t.fail(`cycle ${i}: update did not take ${a.progId} off`);
      // Half the cycles detach first, half leave it to rmdir (the kernel drops a removed cgroup's programs).
      if (i % 2 === 0) t.deepEqual(ctl.detach(dir).detached, [b.progId]);
      fs.rmdirSync(dir);
    }
    const perCycle = (Date.now() - started) / cycles;
    t.is(fdCount(), fds, 'every fd closed');
    t.is(await waitLoaded(name, 0), 0, 'every program freed');
    const lines = mem.lines();
    t.is(lines.filter((l) => l.msg === 'device program loaded').length, 2 * cycles);
    t.is(lines.filter((l) => l.msg === (replace ? 'device program replaced' : 'device program detached')).length, replace ? cycles : cycles + cycles / 2);
    t.log(`${perCycle.toFixed(2)} ms per cycle (mkdir, 2 loads, attach, update, query, ${cycles / 2} detaches, rmdir)`);
  });
}

ktest('500 updates on one long-lived directory: one program of ours, one loaded', async (t) => {
  const name = uniqueProgName();
  const ctl = new DeviceController(memLogger().log, { progName: name, scratchParent: cg.root });
  const dir = cg.dir('long');
  const fds = fdCount();
  let last = 0;
  for (let i = 0; i < 500; i++) {
    last = ctl.apply(dir, policy(i)).progId;
    if (i % 50 === 0) {
      t.deepEqual(ctl.query(dir), { progIds: [last], ours: [last] });
      t.true(loadedPrograms(name).length <= 2, 'the old one may linger only until the kernel frees it');
    }
  }
  t.is(await waitLoaded(name, 1), 1);
  t.is(loadedPrograms(name)[0].id, last);
  ctl.detach(dir);
  t.is(await waitLoaded(name, 0), 0);
  t.is(fdCount(), fds);
});
