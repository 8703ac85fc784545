/**
 * bench/devices: the device-control figures.
 *   node --import tsx bench/devices.ts        (root; BENCH_QUICK=1 for a smoke run)
 *   import { devicesSection } from './devices.js'   (the same figures as data)
 * Sizes 1, 16, 256 and 4096 rules. Rules: exact denies c 200+i/256:i%256,
 * default allow; none matches /dev/null (c 1:3), which the default allows.
 * 1. load + attach of each size's program: the two syscalls alone (compiled
 *    once beforehand; alternating with the same policy emitted as a chain, the
 *    layout before the search), and DeviceController.apply() end to end on a
 *    fresh directory (query, load, info, attach, xattr); compile() uncached.
 * 2. open()+close() of /dev/null from a small C loop (compiled here with gcc)
 *    in a cgroup with no program and with each size's program:
 *      miss   the rules above: /dev/null matches none (the chain's worst case:
 *             it walks every entry; the search: a few tests);
 *      hit    default deny, /dev/null one of the exact allowed entries among
 *             n-1 others on its major (c 1:1000+i), so the search goes down
 *             the minors;
 *      chain  the miss program emitted as a chain (the layout before the
 *             search, emit's treeMin: Infinity) for comparison in the same run.
 *    One process moves itself from cgroup to cgroup, timing a short slice of
 *    opens in each, round after round (the first condition rotates); figures
 *    are medians of the per-slice ns/op, so that a busy neighbour's bursts,
 *    which fall on all conditions alike, drop out.
 * 3. compile() uncached (normalise + emit, the work one request's policy costs
 *    the agent's event loop) by shape of rule set, at the most an admin (4,096
 *    rules) and any other peer (256) may send: see COMPILE_SHAPES. A rule set
 *    the compiler refuses (E2BIG) is timed to the refusal.
 * Not a test: nothing asserts a timing.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import { DeviceController, compile, emit, normalize, type RuleSet } from '../src/devices/index.js';
import * as native from '../src/devices/native.js';
import { MOUNT, removeRoot, summarize, type Summary } from './lib.js';

export const DEVICE_SIZES = [1, 16, 256, 4096] as const;

export interface DevicesSize {
  rules: number;
  /** Instructions of the miss program (what compile() emits), and of the same policy as a chain. */
  insns: number;
  chainInsns: number;
  /** compile() on a cache miss (normalise + emit), ms. */
  compileMs: number;
  /** BPF_PROG_LOAD + BPF_PROG_ATTACH, ms; and of the chain (before the search). */
  loadAttach: Summary;
  chainLoadAttach: Summary;
  /** DeviceController.apply() on a fresh directory, ms. */
  apply: Summary;
  /** Median ns per open()+close() of /dev/null, and that / unconfined. */
  open: {
    miss: { ns: number; ratio: number };
    hit: { ns: number; ratio: number };
    chain: { ns: number; ratio: number };
  };
}

/** compile() of one shape of rule set, uncached: median ms, and what came out. */
export interface CompileShape {
  shape: string;
  rules: number;
  ms: number;
  /** Entries after normalising, or the refusal. */
  entries: number | 'E2BIG';
}

export interface DevicesResult {
  machine: string;
  probe: { supported: boolean; replace?: boolean; reason?: string };
  bpfJitEnable: string;
  /** open() loop: rounds (slices per condition, interleaved), opens per slice. */
  runs: number;
  opens: number;
  iters: number;
  /** Median ns per open()+close() of /dev/null with no device program. */
  unconfinedNs: number;
  sizes: DevicesSize[];
  compileShapes: CompileShape[];
}

/** Default allow; n exact denies, none of them /dev/null. */
export function missRules(n: number): RuleSet {
  return {
    default: 'allow',
    rules: Array.from({ length: n }, (_, i) => ({ type: 'c' as const, major: 200 + (i >> 8), minor: i & 0xff, access: 'rwm', allow: false })),
  };
}

/** Default deny; /dev/null (c 1:3) and n-1 others on major 1 allowed. */
export function hitRules(n: number): RuleSet {
  return {
    default: 'deny',
    rules: [
      { type: 'c', major: 1, minor: 3, access: 'rwm', allow: true },
      ...Array.from({ length: n - 1 }, (_, i) => ({ type: 'c' as const, major: 1, minor: 1000 + i, access: 'rwm', allow: true })),
    ],
  };
}

const ACCESS = ['r', 'w', 'm', 'rw', 'rm', 'wm', 'rwm'];
const rule = (type: 'a' | 'b' | 'c', major: number | '*', minor: number | '*', access: string, allow: boolean) => ({ type, major, minor, access, allow });
/** h "c M:*" and h "c *:N": h * h intersections ("c M:N"), each a pattern the compiler considers. */
const grid = (h: number): RuleSet => ({
  default: 'allow',
  rules: [...Array.from({ length: h }, (_, i) => rule('c', i, '*', 'rw', i % 2 === 0)), ...Array.from({ length: h }, (_, i) => rule('c', '*', i, 'w', false))],
});

/**
 * Shapes of rule sets with n rules, for section 3: what a compile costs
 * depends on how the rules overlap, not only on how many there are.
 */
export const COMPILE_SHAPES: { name: string; make: (n: number) => RuleSet }[] = [
  { name: 'exact denies, default allow (section 1)', make: missRules },
  { name: 'exact allows on one major, default deny', make: hitRules },
  { name: 'mixed allow/deny, b and c, 64 majors, any access', make: (n) => ({ default: 'allow', rules: Array.from({ length: n }, (_, i) => rule(i % 3 ? 'c' : 'b', 10 + (i % 64), i >> 6, ACCESS[i % 7], i % 2 === 0)) }) },
  { name: 'allow and deny of the same devices', make: (n) => ({ default: 'deny', rules: Array.from({ length: n }, (_, i) => rule('c', 10 + ((i >> 1) % 64), i >> 7, ACCESS[i % 7], i % 2 === 0)) }) },
  { name: 'wildcard majors (c *:N)', make: (n) => ({ default: 'allow', rules: Array.from({ length: n }, (_, i) => rule('c', '*', i, ACCESS[i % 7], i % 2 === 0)) }) },
  { name: 'wildcard minors (c M:*), n majors', make: (n) => ({ default: 'deny', rules: Array.from({ length: n }, (_, i) => rule('c', i % 4096, '*', ACCESS[i % 7], i % 2 === 0)) }) },
  { name: 'exact, one minor on each of n majors', make: (n) => ({ default: 'allow', rules: Array.from({ length: n }, (_, i) => rule('c', i % 4096, 0, 'rwm', false)) }) },
  { name: 'type a and c on the same numbers', make: (n) => ({ default: 'allow', rules: Array.from({ length: n }, (_, i) => rule(i % 2 ? 'a' : 'c', 5 + (i >> 8), i & 255, ACCESS[i % 7], i % 3 === 0)) }) },
  { name: '64 c M:* and 64 c *:N, rest exact', make: (n) => ({ default: 'allow', rules: Array.from({ length: n }, (_, i) => (i < 64 ? rule('c', i, '*', 'rw', true) : i < 128 ? rule('c', '*', i - 64, 'w', false) : rule('c', 1000 + (i >> 8), i & 255, 'r', true))) }) },
  { name: 'grid 89 c M:* x 89 c *:N (largest accepted)', make: () => grid(89) },
  { name: 'grid 91 x 91 (refused: 8,281 patterns)', make: () => grid(91) },
  { name: 'grid 2,048 x 2,048 (refused)', make: () => grid(2048) },
];

/** Median ms of compile()'s uncached work on rs (reps runs), and its entries or the refusal. */
function timeCompile(rs: RuleSet, reps: number): { ms: number; entries: number | 'E2BIG' } {
  const ms: number[] = [];
  let entries: number | 'E2BIG' = 'E2BIG';
  for (let i = 0; i < reps; i++) {
    const t0 = process.hrtime.bigint();
    try {
      const p = normalize(rs);
      emit(p);
      entries = p.entries.length;
    } catch (err) {
      if ((err as { code?: string }).code !== 'E2BIG') throw err;
    }
    ms.push(elapsedMs(t0));
  }
  return { ms: summarize(ms).median, entries };
}

/** Section 3 (pure CPU: no kernel needed). */
export function compileShapesSection(quick: boolean): CompileShape[] {
  const sets: { shape: string; rs: RuleSet }[] = [];
  for (const n of [256, 4096]) {
    for (const s of COMPILE_SHAPES) {
      const rs = s.make(n);
      // The grids are the same whatever n.
      if (n === 256 && rs.rules.length > 256) continue;
      if (n === 4096 && s.name.startsWith('grid') && rs.rules.length <= 256) continue;
      sets.push({ shape: s.name, rs });
    }
  }
  // Once each first, so that the figures are of compiled code, not of the JIT warming up.
  for (const { rs } of sets) timeCompile(rs, 1);
  return sets.map(({ shape, rs }) => ({ shape, rules: rs.rules.length, ...timeCompile(rs, quick ? 3 : 15) }));
}

// openloop PATH OPENS ROUNDS DIR...: each round, for each directory (the first
// one rotating), move this process into it, then time OPENS open()+close()
// of PATH; prints "k ns/op" a slice. Moving is not timed.
const OPEN_LOOP = `
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
static void move_to(const char *dir) {
  char p[4096], pid[32];
  snprintf(p, sizeof p, "%s/cgroup.procs", dir);
  int fd = open(p, O_WRONLY | O_CLOEXEC);
  int len = snprintf(pid, sizeof pid, "%d", (int)getpid());
  if (fd < 0 || write(fd, pid, len) != len) { perror(p); exit(1); }
  close(fd);
}
int main(int argc, char **argv) {
  long n = atol(argv[2]), rounds = atol(argv[3]);
  int dirs = argc - 4;
  struct timespec a, b;
  for (long r = 0; r < rounds; r++) {
    for (int j = 0; j < dirs; j++) {
      int k = (int)((j + r) % dirs);
      move_to(argv[4 + k]);
      for (int w = 0; w < 200; w++) close(open(argv[1], O_RDONLY | O_CLOEXEC));
      clock_gettime(CLOCK_MONOTONIC, &a);
      for (long i = 0; i < n; i++) {
        int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
        if (fd < 0) { perror("open"); return 1; }
        close(fd);
      }
      clock_gettime(CLOCK_MONOTONIC, &b);
      printf("%d %.1f\\n", k, ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
    }
  }
  return 0;
}
`;

const elapsedMs = (a: bigint) => Number(process.hrtime.bigint() - a) / 1e6;

/** Run the section; returns its figures (prints nothing). Needs root and device programs. */
export async function devicesSection(opts: { quick: boolean }): Promise<DevicesResult> {
  const { quick } = opts;
  const root = path.join(MOUNT, `cgstep-bench-devices-${process.pid}`);
  fs.mkdirSync(root);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-bench-dev-'));
  const fds: { dirFd: number; dir: string; fd: number }[] = [];
  try {
    const ctl = new DeviceController(pino({ level: 'silent' }), { scratchParent: root });
    const probe = ctl.probe();
    if (!probe.supported) throw new Error(`device control unsupported here: ${probe.reason}`);
    const bpfJitEnable = fs.readFileSync('/proc/sys/net/core/bpf_jit_enable', 'utf8').trim();

    // 1. load + attach
    const iters = quick ? 30 : 300;
    const loads = new Map<number, Omit<DevicesSize, 'open'>>();
    for (const n of DEVICE_SIZES) {
      const rs = missRules(n);
      const c = compile(rs);
      const reps = n >= 4096 ? 10 : 100;
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < reps; i++) emit(normalize(rs)); // what compile() does on a cache miss
      const compileMs = elapsedMs(t0) / reps;
      const dir = path.join(root, `la${n}`);
      fs.mkdirSync(dir);
      const dirFd = native.openDir(dir);
      const chain = emit(c.policy, { treeMin: Infinity }).insns;
      const raw: number[] = [];
      const rawChain: number[] = [];
      try {
        for (let i = 0; i < iters; i++) {
          // Alternate the two programs, so that load on the machine falls on both alike.
          for (const [insns, into] of [[c.insns, raw], [chain, rawChain]] as const) {
            const a = process.hrtime.bigint();
            const fd = native.progLoad(insns, 'cgstep_dev_b', dir);
            try {
              native.progAttach(dirFd, dir, fd, native.bpfFlags.ALLOW_MULTI);
              into.push(elapsedMs(a));
              native.progDetach(dirFd, dir, fd);
            } finally {
              native.closeFd(fd);
            }
          }
        }
      } finally {
        native.closeFd(dirFd);
      }
      fs.rmdirSync(dir);
      const full: number[] = [];
      for (let i = 0; i < iters; i++) {
        const d = path.join(root, `ap${n}-${i}`);
        fs.mkdirSync(d);
        const a = process.hrtime.bigint();
        ctl.apply(d, rs);
        full.push(elapsedMs(a));
        ctl.detach(d);
        fs.rmdirSync(d);
      }
      loads.set(n, { rules: n, insns: c.insns.length / 8, chainInsns: chain.length / 8, compileMs, loadAttach: summarize(raw), chainLoadAttach: summarize(rawChain), apply: summarize(full) });
    }

    // 2. open latency
    const bin = path.join(tmp, 'openloop');
    fs.writeFileSync(`${bin}.c`, OPEN_LOOP);
    execFileSync('gcc', ['-O2', '-o', bin, `${bin}.c`]);
    type Cond = { key: string; n: number; dir: string };
    const conds: Cond[] = [{ key: 'none', n: 0, dir: path.join(root, 'none') }];
    fs.mkdirSync(conds[0].dir);
    for (const n of DEVICE_SIZES) {
      for (const key of ['miss', 'hit', 'chain'] as const) {
        // With one rule the chain and the search are the same program.
        if (key === 'chain' && n < 16) continue;
        const dir = path.join(root, `${key}${n}`);
        fs.mkdirSync(dir);
        if (key === 'miss') ctl.apply(dir, missRules(n));
        else if (key === 'hit') ctl.apply(dir, hitRules(n));
        else {
          const insns = emit(normalize(missRules(n)), { treeMin: Infinity }).insns;
          const dirFd = native.openDir(dir);
          const fd = native.progLoad(insns, 'cgstep_dev_c', dir);
          fds.push({ dirFd, dir, fd });
          native.progAttach(dirFd, dir, fd, native.bpfFlags.ALLOW_MULTI);
        }
        conds.push({ key, n, dir });
      }
    }
    // Short slices, interleaved in one process: a noisy neighbour's bursts fall
    // on every condition alike, and the median drops them.
    const opens = quick ? 2_000 : 5_000;
    const runs = quick ? 10 : 100;
    const out = spawnSync(bin, ['/dev/null', String(opens), String(runs), ...conds.map((c) => c.dir)], { encoding: 'utf8', maxBuffer: 64 << 20 });
    if (out.status !== 0) throw new Error(`open loop failed: ${out.stderr}`);
    const per = conds.map((): number[] => []);
    for (const l of out.stdout.trim().split('\n')) {
      const [k, ns] = l.split(' ').map(Number);
      per[k].push(ns);
    }
    const med = (c: Cond) => summarize(per[conds.indexOf(c)]).median;
    const unconfinedNs = med(conds[0]);
    const at = (key: string, n: number) => {
      // No chain condition below 16 rules: the miss program is that chain.
      const c = conds.find((x) => x.key === key && x.n === n) ?? conds.find((x) => x.key === 'miss' && x.n === n)!;
      const ns = med(c);
      return { ns, ratio: ns / unconfinedNs };
    };
    const sizes: DevicesSize[] = DEVICE_SIZES.map((n) => ({ ...loads.get(n)!, open: { miss: at('miss', n), hit: at('hit', n), chain: at('chain', n) } }));
    for (const c of conds.slice(1)) if (c.key !== 'chain') ctl.detach(c.dir);
    return {
      machine: `${os.cpus().length} x ${os.cpus()[0]?.model ?? 'cpu'}, Linux ${os.release()}, Node ${process.version}`,
      probe,
      bpfJitEnable,
      runs,
      opens,
      iters,
      unconfinedNs,
      sizes,
      compileShapes: compileShapesSection(quick),
    };
  } finally {
    for (const f of fds) {
      try {
        native.progDetach(f.dirFd, f.dir, f.fd);
      } catch {
        // gone with its directory
      }
      native.closeFd(f.fd);
      native.closeFd(f.dirFd);
    }
    await removeRoot(root);
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

/** The section as table lines (what the standalone run prints). */
export function formatDevices(r: DevicesResult): string[] {
  const out: string[] = [];
  const f3 = (x: number) => x.toFixed(3);
  const pct = (ratio: number) => `${ratio >= 1 ? '+' : ''}${((ratio - 1) * 100).toFixed(1)}%`;
  out.push(`device control: ${JSON.stringify(r.probe)}; ${r.machine}; bpf_jit_enable = ${r.bpfJitEnable}`);
  out.push('');
  out.push(`1. load + attach (${r.iters} each; median / p99 ms); rules: exact denies, default allow`);
  out.push('  rules  insns (chain)   load+attach        as a chain (before)  apply()            compile (uncached)');
  const ms2 = (x: Summary) => `${f3(x.median).padStart(7)} / ${f3(x.p99).padEnd(7)}`;
  for (const s of r.sizes) {
    out.push(`  ${String(s.rules).padStart(5)}  ${String(s.insns).padStart(5)} (${String(s.chainInsns).padStart(5)})  ${ms2(s.loadAttach)}  ${ms2(s.chainLoadAttach)}    ${ms2(s.apply)}  ${f3(s.compileMs).padStart(7)}`);
  }
  out.push('');
  out.push(`2. open()+close() of /dev/null (${r.runs} slices x ${r.opens} opens per condition, interleaved; median ns/op and vs unconfined)`);
  out.push(`  unconfined (no program)  ${r.unconfinedNs.toFixed(0)} ns`);
  out.push('  rules   miss (allowed by default)   hit (an exact allowed entry)   miss, as a chain (before)');
  const cell = (x: { ns: number; ratio: number }) => `${x.ns.toFixed(0).padStart(5)} ns ${pct(x.ratio).padStart(7)}`;
  for (const s of r.sizes) {
    const chain = s.rules < 16 ? '  (same program)' : cell(s.open.chain);
    out.push(`  ${String(s.rules).padStart(5)}   ${cell(s.open.miss).padEnd(28)}${cell(s.open.hit).padEnd(31)}${chain}`);
  }
  out.push('');
  out.push('3. compile (uncached: normalise + emit) by shape; median ms; entries after normalising, or the refusal');
  out.push('  rules  ms        entries  shape');
  for (const c of r.compileShapes) out.push(`  ${String(c.rules).padStart(5)}  ${f3(c.ms).padStart(8)}  ${String(c.entries).padStart(7)}  ${c.shape}`);
  return out;
}

const isMain = (() => {
  try {
    return !!process.argv[1] && fs.realpathSync(process.argv[1]) === fs.realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
})();

if (isMain) {
  const r = await devicesSection({ quick: process.env.BENCH_QUICK === '1' });
  for (const l of formatDevices(r)) process.stdout.write(l + '\n');
  if (process.env.BENCH_JSON) fs.writeFileSync(process.env.BENCH_JSON, JSON.stringify(r, null, 2) + '\n');
}
