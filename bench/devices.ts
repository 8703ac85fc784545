/**
 * bench/devices: the device-control figures of issue 4.
 *   node --import tsx bench/devices.ts        (root; BENCH_QUICK=1 for a smoke run)
 * 1. load + attach of a 1-rule and a 256-rule program: the two syscalls alone
 *    (compiled once beforehand), and DeviceController.apply() end to end on a
 *    fresh directory (query, load, info, attach, xattr).
 * 2. open()+close() of /dev/null from a small C loop (compiled here with gcc)
 *    running in a cgroup with no program, with the 1-rule and with the 256-rule
 *    program. The rules never match c 1:3, so /dev/null walks the whole program
 *    (the worst case) and is allowed by the default. Conditions alternate run by
 *    run; medians of the per-run ns/op are printed.
 * Not a test: nothing asserts a timing.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { DeviceController, compile, emit, normalize, type RuleSet } from '../src/devices/index.js';
import * as native from '../src/devices/native.js';
import { MOUNT, removeRoot, summarize } from './lib.js';

const quick = process.env.BENCH_QUICK === '1';
const line = (s = '') => process.stdout.write(s + '\n');

const rules = (n: number): RuleSet => ({
  default: 'allow',
  rules: Array.from({ length: n }, (_, i) => ({ type: 'c' as const, major: 200 + (i >> 8), minor: i & 0xff, access: 'rwm', allow: false })),
});

const OPEN_LOOP = `
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
  long n = atol(argv[2]);
  struct timespec a, b;
  for (int w = 0; w < 1000; w++) close(open(argv[1], O_RDONLY | O_CLOEXEC));
  clock_gettime(CLOCK_MONOTONIC, &a);
  for (long i = 0; i < n; i++) {
    int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
    if (fd < 0) { perror("open"); return 1; }
    close(fd);
  }
  clock_gettime(CLOCK_MONOTONIC, &b);
  printf("%.1f\\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
  return 0;
}
`;

const root = path.join(MOUNT, `cgstep-bench-devices-${process.pid}`);
fs.mkdirSync(root);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-bench-dev-'));
try {
  const ctl = new DeviceController(pino({ level: 'silent' }), { scratchParent: root });
  const probe = ctl.probe();
  line(`device control: ${JSON.stringify(probe)}; ${os.cpus().length} x ${os.cpus()[0]?.model ?? 'cpu'}, Linux ${os.release()}, Node ${process.version}`);
  if (!probe.supported) throw new Error(probe.reason);
  const jit = fs.readFileSync('/proc/sys/net/core/bpf_jit_enable', 'utf8').trim();
  line(`bpf_jit_enable = ${jit}`);

  // 1. load + attach
  const iters = quick ? 30 : 300;
  line(`\n1. load + attach (${iters} each; median / p99)`);
  for (const n of [1, 256]) {
    const c = compile(rules(n));
    const rs = rules(n);
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < 100; i++) emit(normalize(rs)); // what compile() does on a cache miss
    const compileMs = Number(process.hrtime.bigint() - t0) / 1e6 / 100;
    const dir = path.join(root, `la${n}`);
    fs.mkdirSync(dir);
    const dirFd = native.openDir(dir);
    const raw: number[] = [];
    for (let i = 0; i < iters; i++) {
      const a = process.hrtime.bigint();
      const fd = native.progLoad(c.insns, 'cgstep_dev_b', dir);
      native.progAttach(dirFd, dir, fd, native.BPF_F_ALLOW_MULTI);
      raw.push(Number(process.hrtime.bigint() - a) / 1e6);
      native.progDetach(dirFd, dir, fd);
      native.closeFd(fd);
    }
    native.closeFd(dirFd);
    const full: number[] = [];
    for (let i = 0; i < iters; i++) {
      const d = path.join(root, `ap${n}-${i}`);
      fs.mkdirSync(d);
      const a = process.hrtime.bigint();
      ctl.apply(d, rules(n));
      full.push(Number(process.hrtime.bigint() - a) / 1e6);
      ctl.detach(d);
      fs.rmdirSync(d);
    }
    fs.rmdirSync(dir);
    const r = summarize(raw);
    const f = summarize(full);
    line(`  ${String(n).padStart(3)} rule(s): ${c.insns.length / 8} insns; load+attach ${r.median.toFixed(3)} / ${r.p99.toFixed(3)} ms; apply() ${f.median.toFixed(3)} / ${f.p99.toFixed(3)} ms; compile (uncached) ${compileMs.toFixed(3)} ms`);
  }

  // 2. open latency
  const bin = path.join(tmp, 'openloop');
  fs.writeFileSync(`${bin}.c`, OPEN_LOOP);
  execFileSync('gcc', ['-O2', '-o', bin, `${bin}.c`]);
  const conds: { name: string; dir: string }[] = [
    { name: 'unconfined (no program)', dir: path.join(root, 'none') },
    { name: 'confined, 1 rule', dir: path.join(root, 'r1') },
    { name: 'confined, 256 rules', dir: path.join(root, 'r256') },
  ];
  for (const c of conds) fs.mkdirSync(c.dir);
  ctl.apply(conds[1].dir, rules(1));
  ctl.apply(conds[2].dir, rules(256));
  const opens = quick ? 50_000 : 300_000;
  const runs = quick ? 3 : 5;
  const per: number[][] = conds.map(() => []);
  for (let r = 0; r < runs; r++) {
    conds.forEach((c, k) => {
      // The shell moves itself into the cgroup, then becomes the loop.
      const out = spawnSync('sh', ['-c', `echo $$ > ${c.dir}/cgroup.procs && exec ${bin} /dev/null ${opens}`], { encoding: 'utf8' });
      if (out.status !== 0) throw new Error(`open loop failed: ${out.stderr}`);
      per[k].push(Number(out.stdout.trim()));
    });
  }
  line(`\n2. open()+close() of /dev/null (${runs} runs x ${opens} opens; median ns/op, min-max)`);
  const base = summarize(per[0]).median;
  conds.forEach((c, k) => {
    const s = summarize(per[k]);
    const lo = Math.min(...per[k]);
    const hi = Math.max(...per[k]);
    line(`  ${c.name.padEnd(24)} ${s.median.toFixed(0).padStart(5)} ns  (${lo.toFixed(0)}-${hi.toFixed(0)})  ${k ? `+${(s.median - base).toFixed(0)} ns` : ''}`);
  });
  for (const c of conds.slice(1)) ctl.detach(c.dir);
} finally {
  await removeRoot(root);
  fs.rmSync(tmp, { recursive: true, force: true });
}
