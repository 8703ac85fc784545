/**
 * The full-node lane: boots a Debian kernel under qemu (test/vm/vm.ts)
 * twice and runs the guest ava suites inside, then reports them here, one host
 * test per point of the lane, each listing its guest tests with their TAP
 * result and t.log lines.
 *
 *   busybox boot: test/vm/guest/node.guest.ts   points 1-5 (mkdir-mode agent)
 *   systemd boot: test/vm/guest/systemd.guest.ts point 6 (systemd as PID 1,
 *                 the shipped cgstepd.service)
 *
 * Everything the lane needs is installed or fetched on first use and cached
 * (test/vm/README.md). It fails, never hangs: a missing qemu or kernel fails
 * the first test with the reason (and every later one with the same), a guest
 * that does not finish is killed by pid after CGSTEP_VM_TIMEOUT_S (default
 * 420 s per boot) and its console tail is shown.
 * CGSTEP_VM_LOGS=DIR keeps each boot's console and guest output there.
 */
import test, { type ExecutionContext } from 'ava';
import { plain } from './vm.js';
import { BOOT_TIMEOUT_MS, TEST_TIMEOUT_MS, assets, busybox, setupLog, systemd, t0, type Lane } from './lane.js';

const tail = (s: string, n = 40) => s.split('\n').slice(-n).join('\n');
const secs = (ms: number | null) => (ms === null ? '-' : `${(ms / 1000).toFixed(1)} s`);

/** Why a boot produced no usable guest results, or null. */
function bootProblem(l: Lane): string | null {
  if (l.boot.timedOut) return `the guest did not finish within ${BOOT_TIMEOUT_MS / 1000} s (CGSTEP_VM_TIMEOUT_S); qemu killed by pid`;
  if (l.rc === null) return `the guest never ran its tests (qemu exit ${l.boot.code})`;
  if (l.plan === null) return `guest ava printed no TAP plan (exit ${l.rc})`;
  return null;
}

function reportBoot(t: ExecutionContext, mode: string, l: Lane): void {
  const m = l.boot.marks;
  const start = m['guest ava start'] ?? null;
  const end = m['guest ava end'] ?? null;
  t.log(
    `${mode} boot: qemu start to the overlay root ${secs(l.boot.bootMs)} (guest kernel uptime then ${l.boot.guestBootS ?? '-'} s)` +
      `, to the guest tests' start ${secs(start)}${mode === 'systemd' ? ' (systemd as PID 1 up to the test service)' : ''}` +
      `, guest ava ${start !== null && end !== null ? secs(end - start) : '-'}, qemu start to power-off ${secs(l.boot.wallMs)}; guest ava exit ${l.rc ?? '(none)'}, ${l.tests.length} test(s)`,
  );
  // Whatever failed in the guest, hooks included, with its diagnostics: the points' tests only see their own.
  for (const f of l.tests.filter((x) => !x.ok && !x.skip && !x.todo)) t.log(`guest: not ok ${f.n} - ${f.name}\n${[...f.logs, f.diag].filter(Boolean).join('\n')}`);
  const problem = bootProblem(l);
  if (problem) {
    t.log(`console (last lines):\n${tail(l.boot.console)}`);
    if (l.stderr) t.log(`guest ava stderr:\n${tail(l.stderr)}`);
    t.fail(`${mode} boot: ${problem}`);
  } else {
    t.is(l.boot.code, 0, `qemu exit status (console tail:\n${tail(l.boot.console, 15)})`);
    t.is(l.tests.length, l.plan!, `every planned guest test reported (console tail:\n${tail(l.boot.console, 15)})`);
  }
}

test.serial('vm: qemu, a Debian kernel and the initramfs (installed or fetched once, cached)', async (t) => {
  t.timeout(TEST_TIMEOUT_MS);
  try {
    await assets();
  } finally {
    for (const m of setupLog) t.log(m);
  }
  t.pass();
});

test.serial('vm: busybox boot runs the guest suite (mkdir-mode agent)', async (t) => {
  t.timeout(TEST_TIMEOUT_MS);
  reportBoot(t, 'busybox', await busybox());
});

function point(n: number, title: string, which: () => Promise<Lane>): void {
  test.serial(`${n} ${title}`, async (t) => {
    t.timeout(TEST_TIMEOUT_MS);
    const l = await which();
    const mine = l.tests.filter((x) => new RegExp(`^(.* › )?${n} `).test(x.name));
    for (const x of mine) {
      t.log(`${x.ok ? (x.skip ? 'SKIP  ' : 'ok    ') : 'NOT OK'} ${x.name}`);
      for (const line of x.logs) t.log(`         ${line}`);
      if (!x.ok && x.diag) t.log(x.diag);
    }
    if (!mine.length) {
      const why = bootProblem(l);
      if (!why) t.log(`guest ava exit ${l.rc}; stderr:\n${tail(l.stderr, 20)}`);
      t.fail(`no guest test for point ${n} reported: ${why ?? `no guest test title starts with "${n} "`}`);
      return;
    }
    const bad = mine.filter((x) => !x.ok || x.skip || x.todo);
    t.deepEqual(bad.map((x) => x.name), [], `guest tests of point ${n} that did not pass`);
  });
}

point(1, 'controllers: enabled top-down to the scope and below; a task leaf lists memory cpu cpuset pids io', busybox);
point(2, 'memory: OOM kill with the event while the step lives, cgstep stats oom_kill 1; memory.high/swap.max from cgroup.conf', busybox);
point(3, 'cpuset (Cpus_allowed_list: 0) and cpu.max throttling', busybox);
point(4, 'pids: --pids 16, the 17th process fails to fork with EAGAIN', busybox);
point(5, 'devices: eBPF device control in the guest', busybox);

test.serial('vm: systemd boot (systemd as PID 1 on the overlay root) runs the guest suite', async (t) => {
  t.timeout(TEST_TIMEOUT_MS);
  const l = await systemd();
  reportBoot(t, 'systemd', l);
  // Where it got to, from systemd's own status lines on the console.
  const reached = l.boot.console.split('\n').map(plain).filter((x) => /^\[ *(OK|FAILED) *\]/.test(x));
  t.log(`systemd console: ${reached.length} status line(s); last: ${reached.slice(-3).join(' | ')}`);
  t.log(`lane total so far ${secs(performance.now() - t0)}`);
});

point(6, 'systemd as PID 1: the shipped cgstepd.service, status of the scope, restart keeps a step, daemon-reload keeps controllers and cpusets', systemd);
