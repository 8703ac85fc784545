/**
 * Device programs on the real kernel: a prober process in a private cgroup
 * opens device nodes made with mknod (c 1:3, c 1:5, fake GPUs c 195:0-3 whose
 * open gives ENXIO when allowed since no driver exists, block b 7:0) and the
 * errno it gets is asserted exactly. Every cgroup made here is removed, every
 * process ended by pid (helpers.ts).
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { KernelError } from '../../src/errors.js';
import {
  ACC_READ,
  ACC_WRITE,
  DeviceController,
  VerifierError,
  buildRuleSet,
  compile,
  decide,
  parseGresConf,
  parseRule,
  runProgram,
  serializePolicy,
  type RuleSet,
} from '../../src/devices/index.js';
import * as native from '../../src/devices/native.js';
import { getXattr, setXattr } from '../../src/cgroupfs/index.js';
import { OP, decode, emit, normalize } from '../../src/devices/compiler.js';
import { gate } from '../helpers/gate.js';
import { Cgroups, Prober, kernelSkipReason, memLogger, standardNodes, uniqueProgName, type DevNodes } from './helpers.js';
import { GOLDEN_CASES, searchRuleArbs } from './cases.js';

const skip = kernelSkipReason();
const { test: ktest } = gate('BPF device programs', { ok: !skip, reason: skip }, import.meta.url);

const parseRulesOf = (...texts: string[]) => texts.map((s) => (s.startsWith('-') ? parseRule(s.slice(1), false) : parseRule(s, true)));
const rules = (dflt: 'allow' | 'deny', ...texts: string[]): RuleSet => ({
  default: dflt,
  rules: texts.map((s) => (s.startsWith('-') ? parseRule(s.slice(1), false) : parseRule(s, true))),
});

let cg: Cgroups;
let nodes: DevNodes;
let P: Record<string, string>;
const mem = memLogger();
let ctl: DeviceController;
/** What an unconfined process gets for each node (read-only open). */
const baseline: Record<string, string> = {};
let n = 0;

test.before(async () => {
  if (skip) return;
  cg = new Cgroups('kernel');
  nodes = standardNodes();
  P = nodes.paths;
  ctl = new DeviceController(mem.log, { progName: uniqueProgName(), scratchParent: cg.root });
  const p = await Prober.start();
  try {
    for (const name of Object.keys(P)) baseline[name] = await p.open(P[name], 'r');
  } finally {
    await p.kill();
  }
});

test.after.always(async () => {
  if (skip) return;
  nodes?.cleanup();
  await cg?.cleanup();
});

/** A fresh directory with a prober in it. */
async function confined(rel = `t${++n}`): Promise<{ dir: string; p: Prober }> {
  const dir = cg.dir(rel);
  const p = cg.track(await Prober.start());
  await p.moveTo(dir);
  return { dir, p };
}

ktest('unconfined baseline: /dev/null-like nodes open, fake GPUs give ENXIO', (t) => {
  t.is(baseline.null, 'OK');
  t.is(baseline.zero, 'OK');
  for (let i = 0; i < 4; i++) t.is(baseline[`nvidia${i}`], 'ENXIO');
  t.not(baseline.loop0, 'EPERM');
});

ktest('probe: device programs and BPF_F_REPLACE work, and the probe leaves nothing behind', (t) => {
  const r = ctl.probe();
  t.deepEqual(r, { supported: true, replace: true });
  t.is(ctl.probe(), r, 'cached');
  t.deepEqual(fs.readdirSync(cg.root).filter((d) => d.startsWith('cgstep-probe-')), []);
  t.truthy(mem.lines().find((l) => l.msg === 'device control probe' && l.supported === true));
});

ktest('exact rules: allowed opens reach the driver, others EPERM; read-only refuses O_WRONLY', async (t) => {
  const { dir, p } = await confined();
  const r = ctl.apply(dir, rules('deny', 'c 1:3 rwm', 'c 195:0 r', 'c 195:1 rw'));
  t.false(r.unchanged);
  t.is(await p.open(P.null, 'rw'), 'OK');
  t.is(await p.open(P.zero, 'r'), 'EPERM');
  t.is(await p.open(P.nvidia0, 'r'), 'ENXIO');
  t.is(await p.open(P.nvidia0, 'w'), 'EPERM', 'an allow of r must not let w through');
  t.is(await p.open(P.nvidia0, 'rw'), 'EPERM', 'nor rw');
  t.is(await p.open(P.nvidia1, 'rw'), 'ENXIO');
  t.is(await p.open(P.nvidia2, 'r'), 'EPERM');
  t.is(await p.open(P.loop0, 'r'), 'EPERM');
  const logs = mem.lines().filter((l) => l.dir === dir);
  t.truthy(logs.find((l) => l.msg === 'device program loaded' && l.progId === r.progId));
  t.truthy(logs.find((l) => l.msg === 'device program attached' && l.progId === r.progId));
});

ktest('one allow rule must cover the whole request, on real opens as in decide() and the interpreter (cgroup v1, crun, systemd)', async (t) => {
  const mode = { r: ACC_READ, w: ACC_WRITE, rw: ACC_READ | ACC_WRITE } as const;
  const sets: [string[], [string, keyof typeof mode, boolean][]][] = [
    [['c 195:0 r', 'c 195:* w'], [['nvidia0', 'rw', false], ['nvidia0', 'w', true], ['nvidia0', 'r', true]]],
    [['c 195:0 r', 'c 195:0 w'], [['nvidia0', 'rw', false], ['nvidia0', 'r', true]]],
    [['c 195:* rw', '-c 195:0 w'], [['nvidia0', 'r', true], ['nvidia0', 'rw', false], ['nvidia1', 'rw', true]]],
  ];
  const { dir, p } = await confined();
  for (const [texts, cases] of sets) {
    const rs = rules('deny', ...texts);
    const { insns } = compile(rs);
    ctl.apply(dir, rs);
    for (const [node, m, want] of cases) {
      const d = { type: 'c' as const, major: 195, minor: Number(node.slice(-1)) };
      const what = `${texts.join(', ')}: ${node} ${m}`;
      t.is(decide(rs, d, mode[m]), want, `decide: ${what}`);
      t.is(runProgram(insns, d, mode[m]), want, `interpreter: ${what}`);
      t.is(await p.open(P[node], m), want ? 'ENXIO' : 'EPERM', `kernel: ${what}`);
    }
  }
});

ktest('closed mode allows what systemd DevicePolicy=closed allows, b 0:0 and c 0:0 included (its inaccessible nodes)', async (t) => {
  const { dir, p } = await confined();
  ctl.apply(dir, buildRuleSet({ policy: 'closed' }));
  t.is(await p.mknod(path.join(nodes.dir, 'inacc-blk'), 'b', 0, 0), 'OK');
  t.is(await p.mknod(path.join(nodes.dir, 'inacc-chr'), 'c', 0, 0), 'OK');
  t.is(await p.mknod(path.join(nodes.dir, 'closed-loop'), 'b', 7, 0), 'EPERM');
  t.is(await p.open(P.null, 'rw'), 'OK');
  t.is(await p.open(P.nvidia0, 'r'), 'EPERM');
});

ktest('mknod is refused without m, allowed with it', async (t) => {
  const { dir, p } = await confined();
  ctl.apply(dir, rules('deny', 'c 1:3 rw', 'c 1:5 rwm'));
  t.is(await p.mknod(path.join(nodes.dir, 'mk-null'), 'c', 1, 3), 'EPERM');
  t.is(await p.mknod(path.join(nodes.dir, 'mk-zero'), 'c', 1, 5), 'OK');
  t.is(await p.mknod(path.join(nodes.dir, 'mk-gpu'), 'c', 195, 0), 'EPERM');
  t.is(await p.open(P.null, 'rw'), 'OK', 'rw without m still opens');
  ctl.apply(dir, rules('allow', '-c 1:* m'));
  t.is(await p.mknod(path.join(nodes.dir, 'mk-null2'), 'c', 1, 3), 'EPERM');
  t.is(await p.mknod(path.join(nodes.dir, 'mk-gpu2'), 'c', 195, 0), 'OK');
  t.is(await p.open(P.zero, 'rw'), 'OK');
});

ktest('wildcards: most specific rule wins, type a and block devices', async (t) => {
  const { dir, p } = await confined();
  ctl.apply(dir, rules('allow', '-c 195:* rwm', 'c 195:2 rw'));
  t.is(await p.open(P.nvidia0, 'r'), 'EPERM');
  t.is(await p.open(P.nvidia3, 'r'), 'EPERM');
  t.is(await p.open(P.nvidia2, 'rw'), 'ENXIO');
  t.is(await p.open(P.null, 'rw'), 'OK');
  t.is(await p.open(P.loop0, 'r'), baseline.loop0);

  ctl.apply(dir, rules('allow', '-a *:* rwm', 'c 1:* rw', 'b 7:* r'));
  t.is(await p.open(P.null, 'rw'), 'OK');
  t.is(await p.open(P.zero, 'rw'), 'OK');
  t.is(await p.open(P.nvidia1, 'r'), 'EPERM');
  t.is(await p.open(P.loop0, 'r'), baseline.loop0);
  t.is(await p.open(P.loop0, 'rw'), 'EPERM');

  ctl.apply(dir, rules('deny', 'a 195:* r'));
  t.is(await p.open(P.nvidia1, 'r'), 'ENXIO');
  t.is(await p.open(P.nvidia1, 'w'), 'EPERM');
  t.is(await p.open(P.null, 'r'), 'EPERM');
});

ktest('access(F_OK) with no bits: allowed when some access is, as decide() says', async (t) => {
  const { dir, p } = await confined();
  const rs = rules('deny', 'c 195:0 r', 'c 195:1 m', 'c 195:3 rwm', '-c 195:3 rwm');
  ctl.apply(dir, rs);
  const dev = (minor: number) => ({ type: 'c' as const, major: 195, minor });
  t.is(await p.access(P.nvidia0), 'OK');
  t.true(decide(rs, dev(0), 0));
  t.is(await p.access(P.nvidia1), 'OK');
  t.true(decide(rs, dev(1), 0));
  t.is(await p.access(P.nvidia2), 'EPERM');
  t.false(decide(rs, dev(2), 0));
  t.is(await p.access(P.nvidia3), 'EPERM', 'deny beats allow at equal specificity');
  t.false(decide(rs, dev(3), 0));
});

ktest('nested directories: each level narrows, none widens (job/step/task)', async (t) => {
  const job = cg.dir(`nest${++n}`);
  const step = cg.dir(path.relative(cg.root, job) + '/step');
  const task = cg.dir(path.relative(cg.root, step) + '/task');
  const p = cg.track(await Prober.start());
  await p.moveTo(task);
  const j = ctl.apply(job, rules('allow', '-c 195:3 rwm'));
  const s = ctl.apply(step, rules('allow', '-c 195:2 rwm', 'c 195:3 rwm'));
  const k = ctl.apply(task, rules('allow', '-c 195:1 w'));
  t.is(await p.open(P.nvidia0, 'rw'), 'ENXIO');
  t.is(await p.open(P.nvidia1, 'r'), 'ENXIO');
  t.is(await p.open(P.nvidia1, 'w'), 'EPERM', 'task narrows');
  t.is(await p.open(P.nvidia2, 'r'), 'EPERM', 'step narrows');
  t.is(await p.open(P.nvidia3, 'r'), 'EPERM', "the step's allow does not widen the job's deny");
  t.deepEqual([...ctl.effective(task)].sort((a, b) => a - b), [j.progId, s.progId, k.progId].sort((a, b) => a - b));
  t.deepEqual(ctl.query(task), { progIds: [k.progId], ours: [k.progId] });
  // A task-level allow cannot reopen what the job denies either.
  ctl.apply(task, rules('deny', 'a *:* rwm'));
  t.is(await p.open(P.nvidia3, 'r'), 'EPERM');
  t.is(await p.open(P.nvidia0, 'r'), 'ENXIO');
});

ktest('closed and open policies with gres.conf on the kernel', async (t) => {
  const { dir, p } = await confined();
  const inventory = parseGresConf(`Name=gpu Type=fake File=${nodes.dir}/nvidia[0-3]\n`, { nodeName: 'n1' });
  ctl.apply(dir, buildRuleSet({ policy: 'closed', gres: ['gpu:0'] }, { inventory }));
  t.is(await p.open(P.null, 'rw'), 'OK');
  t.is(await p.open(P.zero, 'rw'), 'OK');
  t.is(await p.open(P.nvidia0, 'rw'), 'ENXIO');
  t.is(await p.open(P.nvidia1, 'r'), 'EPERM');
  t.is(await p.open(P.loop0, 'r'), 'EPERM');
  const r = ctl.apply(dir, buildRuleSet({ gres: [`${nodes.dir}/nvidia1`, 'gpu:3'], allow: ['c 195:* rw'] }, { inventory }));
  t.truthy(r.replacedProgId);
  t.is(await p.open(P.nvidia0, 'r'), 'EPERM', 'a broad allow never opens an unallocated gres device');
  t.is(await p.open(P.nvidia1, 'rw'), 'ENXIO');
  t.is(await p.open(P.nvidia2, 'r'), 'EPERM');
  t.is(await p.open(P.nvidia3, 'rw'), 'ENXIO');
  t.is(await p.open(P.loop0, 'r'), baseline.loop0);
});

for (const replace of [true, false]) {
  ktest(`update while the process runs (${replace ? 'BPF_F_REPLACE' : 'attach new, then detach old'}): never looser, always one of ours`, async (t) => {
    const local = memLogger();
    const c = new DeviceController(local.log, { progName: ctl.progName, scratchParent: cg.root, replace });
    t.is(c.probe().replace, replace);
    const { dir, p } = await confined();
    // X allowed in both, Y denied in both, Z flips.
    const A = rules('allow', '-c 195:1 rwm');
    const B = rules('allow', '-c 195:1 rwm', '-c 195:2 rwm');
    c.apply(dir, A);
    const started = await p.ask({ op: 'hammer', paths: [P.nvidia0, P.nvidia1, P.nvidia2], seconds: 1.2 });
    t.true(started.started);
    let updates = 0;
    const end = Date.now() + 900;
    const seen = new Set<number>();
    while (Date.now() < end) {
      const r = c.apply(dir, updates % 2 === 0 ? B : A);
      seen.add(r.progId);
      if (replace) t.truthy(r.replacedProgId);
      else t.is(r.detachedProgIds.length, 1);
      const q = c.query(dir);
      if (q.ours.length !== 1 || q.ours[0] !== r.progId) t.fail(`after update ${updates}: ours ${q.ours}`);
      updates++;
    }
    const res = await p.answer(10_000);
    t.log(`${updates} updates during ${res.rounds} open rounds: ${JSON.stringify(res.r)}`);
    t.true(updates > 20);
    t.deepEqual(Object.keys(res.r[P.nvidia0]), ['ENXIO'], 'allowed in both policies: never refused, even mid-update');
    t.deepEqual(Object.keys(res.r[P.nvidia1]), ['EPERM'], 'denied in both policies: never opened, even mid-update');
    t.true((res.r[P.nvidia2].ENXIO ?? 0) + (res.r[P.nvidia2].EPERM ?? 0) === res.rounds);
    const msgs = local.lines().map((l) => l.msg);
    t.is(msgs.filter((m) => m === (replace ? 'device program replaced' : 'device program detached')).length, updates);
  });
}

ktest('restart: a new controller reads the stored policy, keeps the same program, replaces ours', (t) => {
  const dir = cg.dir(`restart${++n}`);
  const rs = rules('deny', 'c 1:3 rwm', 'c 195:0 rw');
  const first = ctl.apply(dir, rs);
  t.true(first.policyStored);
  const again = new DeviceController(memLogger().log, { scratchParent: cg.root });
  const d = again.describe(dir);
  t.deepEqual(d.policy, compile(rs).policy);
  t.true(d.consistent);
  t.deepEqual(d.ours, [first.progId]);
  t.is(getXattr(dir, 'trusted.cgstep.devices')!.toString(), serializePolicy(compile(rs).policy));
  const same = again.apply(dir, rs);
  t.true(same.unchanged);
  t.is(same.progId, first.progId);
  t.true(again.apply(dir, d.policy!).unchanged, 'the stored normal form re-applies to the same program');
  const next = again.apply(dir, rules('deny', 'c 1:3 rwm'));
  t.is(next.replacedProgId, first.progId);
  t.deepEqual(ctl.query(dir).ours, [next.progId]);
  // A policy xattr that does not match the program is reported, not trusted.
  setXattr(dir, 'trusted.cgstep.devices', Buffer.from(serializePolicy(compile(rs).policy)));
  t.false(again.describe(dir).consistent);
  setXattr(dir, 'trusted.cgstep.devices', Buffer.from('garbage'));
  const bad = again.describe(dir);
  t.false(bad.consistent);
  t.is(bad.policy, null);
  t.throws(() => again.readPolicy(dir), { message: /stored device policy line 1/ });
  t.deepEqual(again.detach(dir), { detached: [next.progId] });
  t.is(again.readPolicy(dir), null);
  t.true(again.describe(dir).consistent);
  t.deepEqual(again.detach(path.join(cg.root, 'no-such-dir')), { detached: [] });
});

for (const replace of [true, false]) {
  ktest(`leftovers of a crash (two of ours on one directory) are cleaned by the next update (${replace ? 'replace' : 'attach+detach'})`, async (t) => {
    const { dir, p } = await confined();
    const c = new DeviceController(memLogger().log, { progName: ctl.progName, scratchParent: cg.root, replace });
    const dirFd = native.openDir(dir);
    const fds: number[] = [];
    try {
      for (const minor of [0, 1]) {
        const fd = native.progLoad(compile(rules('allow', `-c 195:${minor} rwm`)).insns, 'cgstep_dev_old', dir);
        fds.push(fd);
        native.progAttach(dirFd, dir, fd, native.bpfFlags.ALLOW_MULTI);
      }
      t.is(c.query(dir).ours.length, 2);
      t.false(c.describe(dir).consistent);
      t.is(await p.open(P.nvidia0, 'r'), 'EPERM');
      t.is(await p.open(P.nvidia1, 'r'), 'EPERM');
      const r = c.apply(dir, rules('allow', '-c 195:2 rwm'));
      t.is((r.replacedProgId !== undefined ? 1 : 0) + r.detachedProgIds.length, 2);
      t.deepEqual(c.query(dir), { progIds: [r.progId], ours: [r.progId] });
      t.true(c.describe(dir).consistent);
      t.is(await p.open(P.nvidia0, 'r'), 'ENXIO');
      t.is(await p.open(P.nvidia2, 'r'), 'EPERM');
    } finally {
      for (const fd of fds) native.closeFd(fd);
      native.closeFd(dirFd);
    }
  });
}

ktest("other programs on the directory are never touched", async (t) => {
  const { dir, p } = await confined();
  const foreign = native.progLoad(Buffer.from('b7000000010000009500000000000000', 'hex'), 'foreign_dev', dir);
  const dirFd = native.openDir(dir);
  t.teardown(() => {
    try {
      native.progDetach(dirFd, dir, foreign);
    } catch {
      // already gone with the directory
    }
    native.closeFd(dirFd);
    native.closeFd(foreign);
  });
  native.progAttach(dirFd, dir, foreign, native.bpfFlags.ALLOW_MULTI);
  const foreignId = native.progInfo(foreign, dir).id;
  const a = ctl.apply(dir, rules('allow', '-c 195:0 rwm'));
  const b = ctl.apply(dir, rules('allow', '-c 195:1 rwm'));
  t.is(b.replacedProgId, a.progId);
  t.deepEqual([...ctl.query(dir).progIds].sort((x, y) => x - y), [foreignId, b.progId].sort((x, y) => x - y));
  t.deepEqual(ctl.query(dir).ours, [b.progId]);
  t.is(await p.open(P.nvidia1, 'r'), 'EPERM');
  t.is(await p.open(P.nvidia0, 'r'), 'ENXIO');
  t.deepEqual(ctl.detach(dir), { detached: [b.progId] });
  t.deepEqual(ctl.query(dir), { progIds: [foreignId], ours: [] });
});

ktest('errors are typed: missing directory, exclusive foreign program, verifier log', (t) => {
  const missing = path.join(cg.root, 'missing');
  const e1 = t.throws(() => ctl.apply(missing, rules('allow')), { instanceOf: KernelError }) as KernelError;
  t.is(e1.errno, 'ENOENT');
  t.is(e1.path, missing);
  t.is(e1.op, 'open');
  t.is(e1.code, 'ENOENT');

  // A program attached without ALLOW_MULTI (exclusive) blocks ours: EPERM, and nothing of ours stays loaded.
  const dir = cg.dir(`excl${++n}`);
  const foreign = native.progLoad(Buffer.from('b7000000010000009500000000000000', 'hex'), 'foreign_excl', dir);
  const dirFd = native.openDir(dir);
  try {
    native.progAttach(dirFd, dir, foreign, 0);
    const e2 = t.throws(() => ctl.apply(dir, rules('allow', '-c 1:5 rwm')), { instanceOf: KernelError }) as KernelError;
    t.is(e2.op, 'bpf(BPF_PROG_ATTACH)');
    t.is(e2.errno, 'EPERM');
    t.is(e2.path, dir);
    t.deepEqual(ctl.query(dir).ours, []);
    native.progDetach(dirFd, dir, foreign);
  } finally {
    native.closeFd(dirFd);
    native.closeFd(foreign);
  }

  // "exit" without setting r0: the verifier's words come back.
  const e3 = t.throws(() => native.progLoad(Buffer.from('9500000000000000', 'hex'), 'cgstep_dev_bad', '/x'), { instanceOf: VerifierError }) as VerifierError;
  t.is(e3.errno, 'EACCES');
  t.is(e3.op, 'bpf(BPF_PROG_LOAD)');
  t.regex(e3.verifierLog, /R0 !read_ok/);
  t.regex(e3.message, /verifier: R0 !read_ok/);
  t.throws(() => native.progLoad(Buffer.alloc(8), 'bad name!', '/x'), { message: /program name/ });

  // A log far past the first 64 KiB buffer: the addon grows it until the whole log fits.
  const count = 20000;
  const big = Buffer.alloc((count + 1) * 8);
  for (let i = 0; i < count; i++) {
    big.writeUInt8(0xb7, i * 8);
    big.writeUInt8(1, i * 8 + 1); // r1 = i
    big.writeInt32LE(i, i * 8 + 4);
  }
  big.writeUInt8(0x95, count * 8);
  const e4 = t.throws(() => native.progLoad(big, 'cgstep_dev_big', '/x'), { instanceOf: VerifierError }) as VerifierError;
  t.true(e4.verifierLog.length > 256 * 1024, `log of ${e4.verifierLog.length} bytes`);
  t.regex(e4.verifierLog, /^0: R1=ctx\(\)/);
  t.regex(e4.verifierLog, /R0 !read_ok\nprocessed 20001 insns/);
});

ktest('the kernel accepts every golden program and keeps exactly our instructions', (t) => {
  for (const c of GOLDEN_CASES) {
    const { insns } = compile(c.rules);
    const fd = native.progLoad(insns, 'cgstep_dev_gold', c.name);
    try {
      const info = native.progInfo(fd, c.name);
      t.is(info.type, native.bpfFlags.PROG_TYPE_CGROUP_DEVICE);
      t.is(info.name, 'cgstep_dev_gold');
      t.true(info.xlated.equals(insns), `${c.name}: xlated differs`);
    } finally {
      native.closeFd(fd);
    }
  }
});

ktest('the verifier accepts the program of any random rule set', (t) => {
  const rule = fc.record({
    type: fc.constantFrom('a', 'b', 'c'),
    major: fc.oneof(fc.constant('*' as const), fc.integer({ min: 0, max: 4095 }), fc.integer({ min: 0, max: 3 })),
    minor: fc.oneof(fc.constant('*' as const), fc.integer({ min: 0, max: 0xfffff }), fc.integer({ min: 0, max: 3 })),
    access: fc.subarray(['r', 'w', 'm'], { minLength: 1 }).map((a) => a.join('')),
    allow: fc.boolean(),
  });
  fc.assert(
    fc.property(fc.constantFrom('allow', 'deny'), fc.array(rule, { maxLength: 40 }), (dflt, rs) => {
      const { insns } = compile({ default: dflt as 'allow' | 'deny', rules: rs as any });
      const fd = native.progLoad(insns, 'cgstep_dev_rand', 'random');
      native.closeFd(fd);
    }),
    { numRuns: 300 },
  );
  t.pass();
});

ktest('4096 rules: the searched program loads, attaches, is kept as emitted, and real opens get its verdicts (hits, misses, wildcards)', async (t) => {
  const { dir, p } = await confined();
  const exact = (type: 'b' | 'c', major: number, minor: number, access: string, allow: boolean) => ({ type, major, minor, access, allow });
  const rs: RuleSet = {
    default: 'deny',
    rules: [
      // The nodes under test, among thousands of neighbours.
      exact('c', 1, 3, 'rw', true), // null: hit, allowed rw (not m)
      exact('c', 195, 0, 'rwm', true), // nvidia0: hit, allowed
      exact('c', 195, 1, 'rwm', false), // nvidia1: hit, denied under the wildcard allow below
      exact('c', 195, 3, 'r', true), // nvidia3: hit, r only (w and m denied here, or the wildcard would give w)
      exact('c', 195, 3, 'wm', false),
      ...parseRulesOf('c 195:* rw', 'a 7:* r'), // nvidia2: a miss in 195's minors, the wildcard allows; loop0: type a
      // zero (c 1:5): a miss among major 1's minors, no wildcard: the default denies.
    ],
  };
  for (let i = 0; rs.rules.length < 4096; i++) {
    rs.rules.push(exact('c', 1, 6 + i, i % 3 ? 'rw' : 'r', true)); // major 1's minors around null and zero
    rs.rules.push(exact('c', 195, 4 + i, 'rwm', i % 2 === 0)); // GPUs' neighbours
    rs.rules.push(exact(i % 4 ? 'c' : 'b', 200 + (i % 40), i, 'rwm', i % 5 !== 0)); // other majors, and block devices
  }
  rs.rules.length = 4096;
  const c = compile(rs);
  const x = decode(c.insns);
  t.true(x.some((i) => i.code === OP.JGTK), 'searched');
  t.true(c.policy.entries.length > 3000);
  const r = ctl.apply(dir, rs);
  const info = native.infoById(r.progId)!;
  t.true(info.xlated.equals(c.insns), 'the verifier kept every instruction as emitted');
  t.log(`${rs.rules.length} rules, ${c.policy.entries.length} entries, ${x.length} instructions (as a chain: ${emit(normalize(rs), { treeMin: Infinity }).insns.length / 8})`);
  const devs: Record<string, { type: 'b' | 'c'; major: number; minor: number }> = {
    null: { type: 'c', major: 1, minor: 3 },
    zero: { type: 'c', major: 1, minor: 5 },
    nvidia0: { type: 'c', major: 195, minor: 0 },
    nvidia1: { type: 'c', major: 195, minor: 1 },
    nvidia2: { type: 'c', major: 195, minor: 2 },
    nvidia3: { type: 'c', major: 195, minor: 3 },
    loop0: { type: 'b', major: 7, minor: 0 },
  };
  const bits = { r: ACC_READ, w: ACC_WRITE, rw: ACC_READ | ACC_WRITE } as const;
  const want: Record<string, Record<string, boolean>> = {
    null: { r: true, w: true, rw: true },
    zero: { r: false, w: false, rw: false },
    nvidia0: { r: true, w: true, rw: true },
    nvidia1: { r: false, w: false, rw: false },
    nvidia2: { r: true, w: true, rw: true },
    nvidia3: { r: true, w: false, rw: false },
    loop0: { r: true, w: false, rw: false },
  };
  for (const [name, d] of Object.entries(devs)) {
    for (const mode of ['r', 'w', 'rw'] as const) {
      t.is(decide(rs, d, bits[mode]), want[name][mode], `decide: ${name} ${mode}`);
      const got = await p.open(P[name], mode);
      t.is(got, want[name][mode] ? baseline[name] : 'EPERM', `${name} ${mode}`);
    }
  }
  t.is(await p.mknod(path.join(nodes.dir, 'mk-null'), 'c', 1, 3), 'EPERM', 'null has rw, not m');
  t.is(await p.mknod(path.join(nodes.dir, 'mk-gpu0'), 'c', 195, 0), 'OK');
  t.deepEqual(ctl.detach(dir), { detached: [r.progId] });
});

ktest('the verifier keeps searched programs as emitted (random sets of 20-400 exact rules plus wildcards)', (t) => {
  const { exactRule, wildRule } = searchRuleArbs();
  fc.assert(
    fc.property(fc.constantFrom('allow' as const, 'deny' as const), fc.array(exactRule, { minLength: 20, maxLength: 400 }), fc.array(wildRule, { maxLength: 20 }), fc.integer({ min: 1, max: 40 }), (dflt, ex, wild, treeMin) => {
      const prog = emit(normalize({ default: dflt, rules: [...ex, ...wild] }), { treeMin });
      const fd = native.progLoad(prog.insns, 'cgstep_dev_rand', 'random');
      try {
        return native.progInfo(fd, 'random').xlated.equals(prog.insns);
      } finally {
        native.closeFd(fd);
      }
    }),
    { numRuns: 200 },
  );
  t.pass();
});

ktest('every fd is closed: apply, update, query, describe, detach and failures', (t) => {
  const fds = () => fs.readdirSync('/proc/self/fd').length;
  const before = fds();
  const dir = cg.dir(`fds${++n}`);
  for (let i = 0; i < 20; i++) {
    ctl.apply(dir, rules('allow', `-c 195:${i} rwm`));
    ctl.apply(dir, rules('allow', `-c 195:${i} rwm`));
    ctl.query(dir);
    ctl.describe(dir);
    ctl.effective(dir);
    t.throws(() => ctl.apply(path.join(dir, 'nope'), rules('allow', '-c 1:3 r')));
  }
  ctl.detach(dir);
  t.is(fds(), before);
});
