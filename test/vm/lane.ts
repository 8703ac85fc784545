/**
 * test/vm/lane: the two boots of the VM lane and what each runs (vm.test.ts
 * reports them; run.ts and ad-hoc scripts can call them directly).
 *
 *   busybox boot: test/vm/guest/node.guest.ts    points 1-5 (mkdir-mode agent)
 *   systemd boot: test/vm/guest/systemd.guest.ts point 6 (systemd as PID 1, the
 *                 shipped cgstepd.service)
 */
import fs from 'node:fs';
import path from 'node:path';
import { bootVm, parseTap, prepareAssets, GUEST_OUT, REPO, accel, type BootResult, type TapResult, type VmAssets } from './vm.js';

export const BOOT_TIMEOUT_MS = Number(process.env.CGSTEP_VM_TIMEOUT_S ?? 420) * 1000;
export const TEST_TIMEOUT_MS = 2 * BOOT_TIMEOUT_MS + 15 * 60000;
const GUEST_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
const AVA = 'node_modules/ava/entrypoints/cli.mjs';
const AVA_CONFIG = 'test/vm/guest/ava.config.mjs';
export const t0 = performance.now();
export const setupLog: string[] = [];

export function once<T>(fn: () => Promise<T>): () => Promise<T> {
  let p: Promise<T> | null = null;
  return () => (p ??= fn());
}

/** The guest side of one boot: ava over one file, TAP and exit status into the share. */
export function guestJob(mode: string, file: string): string {
  return [
    `export PATH=${GUEST_PATH} HOME=/root LANG=C.UTF-8`,
    `cd ${REPO} || exit 1`,
    `echo "CGSTEP-VM: guest ava start (uptime $(cut -d' ' -f1 /proc/uptime) s)"`,
    `${process.execPath} ${AVA} --config ${AVA_CONFIG} --tap ${file} > ${GUEST_OUT}/${mode}.tap 2> ${GUEST_OUT}/${mode}.err`,
    `echo $? > ${GUEST_OUT}/${mode}.rc`,
    `echo "CGSTEP-VM: guest ava end, exit $(cat ${GUEST_OUT}/${mode}.rc) (uptime $(cut -d' ' -f1 /proc/uptime) s)"`,
    'sync',
    '',
  ].join('\n');
}

/**
 * systemd mode: prepare.sh runs in the initramfs on the overlay before
 * switch_root. It installs the shipped unit unchanged, /usr/local/bin wrappers
 * for the built tree (the unit's ExecStart), and the lane's target and oneshot
 * test service, which powers the guest off when it ends (either way).
 */
export function systemdFiles(): Record<string, string> {
  const target = ['[Unit]', 'Description=cgstep VM lane', 'Wants=cgstep-vm-test.service', 'AllowIsolate=yes', ''].join('\n');
  const service = [
    '[Unit]',
    'Description=cgstep VM lane: guest tests under systemd as PID 1',
    'Wants=cgstepd.service dbus.service',
    'After=cgstepd.service dbus.service',
    'SuccessAction=poweroff-force',
    'FailureAction=poweroff-force',
    '[Service]',
    'Type=oneshot',
    'TimeoutStartSec=infinity',
    `ExecStart=/bin/sh ${GUEST_OUT}/job.sh`,
    'StandardOutput=journal+console',
    'StandardError=journal+console',
    '',
  ].join('\n');
  const wrapper = (bin: string) => `#!/bin/sh\nexec ${process.execPath} ${REPO}/dist/bin/${bin}.js "$@"\n`;
  const prepare = [
    '#!/bin/sh',
    '# Runs in the initramfs with the overlay root as $1 (test/vm/init.sh).',
    'set -e',
    'R="$1"',
    'mkdir -p "$R/etc/systemd/system" "$R/usr/local/bin"',
    `cp "$R${REPO}/systemd/cgstepd.service" "$R/etc/systemd/system/cgstepd.service"`,
    `cp -r "$R${GUEST_OUT}/units/"* "$R/etc/systemd/system/"`,
    `cp "$R${GUEST_OUT}/bin/cgstepd" "$R${GUEST_OUT}/bin/cgstep" "$R/usr/local/bin/"`,
    'chmod 0755 "$R/usr/local/bin/cgstepd" "$R/usr/local/bin/cgstep"',
    // The host is a container (/.dockerenv): seen there, systemd would take itself for a
    // container's init and ignore the kernel command line. The whiteout stays in the tmpfs.
    'rm -f "$R/.dockerenv" "$R/run/.containerenv"',
    'ln -sf cgstep-vm.target "$R/etc/systemd/system/default.target"',
    // A fresh node's /tmp: else systemd-tmpfiles --boot walks (and whites out) the host's /tmp.
    // What the lane lists in keep (the tree under test when it lives there) is moved over the tmpfs.
    'for d in /tmp /var/tmp; do',
    '  for k in $(cat "$R/cgstep-vm/keep" 2>/dev/null); do case "$k" in "$d"/*) mkdir -p "/keep$k"; mount --bind "$R$k" "/keep$k" ;; esac; done',
    '  mount -t tmpfs -o mode=1777 tmpfs "$R$d"',
    '  for k in $(cat "$R/cgstep-vm/keep" 2>/dev/null); do case "$k" in "$d"/*) mkdir -p "$R$k"; mount --move "/keep$k" "$R$k" ;; esac; done',
    'done',
    // The host's enablements are not this node's: nothing but what the lane's target pulls in.
    'for u in getty.target.wants multi-user.target.wants timers.target.wants; do rm -rf "$R/etc/systemd/system/$u"; done',
    '',
  ].join('\n');
  return {
    'prepare.sh': prepare,
    'units/cgstep-vm.target': target,
    'units/cgstep-vm-test.service': service,
    'bin/cgstepd': wrapper('cgstepd'),
    'bin/cgstep': wrapper('cgstep'),
    'job.sh':
      guestJob('systemd', 'test/vm/guest/systemd.guest.ts') +
      `systemd-analyze blame --no-pager > ${GUEST_OUT}/systemd.blame 2>&1\njournalctl -b --no-pager -o short-monotonic > ${GUEST_OUT}/systemd.journal 2>&1\nsync\n`,
  };
}

export interface Lane {
  boot: BootResult;
  tests: TapResult[];
  plan: number | null;
  rc: string | null;
  stderr: string;
}

export const assets = once(async (): Promise<VmAssets> => {
  const s = performance.now();
  const a = prepareAssets((m) => setupLog.push(m));
  setupLog.push(`assets ready in ${((performance.now() - s) / 1000).toFixed(1)} s: qemu ${a.qemu} (accel ${accel()}), kernel ${a.kernel.version}, initramfs ${a.initrd}`);
  return a;
});

function keep(mode: string, r: BootResult): void {
  const dir = process.env.CGSTEP_VM_LOGS;
  if (!dir) return;
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, `${mode}.console.txt`), r.console);
  for (const [f, text] of Object.entries(r.files)) if (f.startsWith(`${mode}.`)) fs.writeFileSync(path.join(dir, f), text);
}

export async function lane(mode: 'busybox' | 'systemd'): Promise<Lane> {
  const a = await assets();
  const files: Record<string, string> = mode === 'busybox' ? { 'job.sh': guestJob('busybox', 'test/vm/guest/node.guest.ts') } : systemdFiles();
  // The guest gets a fresh /tmp and /var/tmp: a tree under test that lives there is kept (init.sh, prepare.sh).
  if (/^\/(var\/)?tmp\//.test(REPO)) {
    files.keep = `${REPO}\n`;
    // The shipped unit's PrivateTmp would hide it from cgstepd: a drop-in, only then.
    if (mode === 'systemd') files['units/cgstepd.service.d/keep-tree.conf'] = '[Service]\nPrivateTmp=no\n';
  }
  const append = mode === 'systemd' ? 'systemd.unit=cgstep-vm.target systemd.show_status=true' : '';
  const onLine = process.env.CGSTEP_VM_VERBOSE ? (line: string) => process.stderr.write(`[vm ${mode}] ${line}\n`) : undefined;
  const boot = await bootVm(a, { mode, files, timeoutMs: BOOT_TIMEOUT_MS, append, onLine });
  keep(mode, boot);
  const { tests, plan } = parseTap(boot.files[`${mode}.tap`] ?? '');
  return { boot, tests, plan, rc: boot.files[`${mode}.rc`]?.trim() ?? null, stderr: boot.files[`${mode}.err`] ?? '' };
}

// One boot after the other: the guest has two vCPUs and so has the host.
export const busybox = once(() => lane('busybox'));
export const systemd = once(async () => {
  await busybox().catch(() => undefined);
  return lane('systemd');
});

