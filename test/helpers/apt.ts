/**
 * test/helpers/apt: Debian packages a test harness needs (the Slurm cluster,
 * the VM lane), installed when missing. One way for all of them: under one file
 * lock, since two test files running apt-get at once fail on dpkg's own lock;
 * daemons kept from starting by a policy-rc.d (removed again only if this made
 * it); `apt-get update` first, as a fresh image has no package lists.
 * Synchronous: harnesses decide at load time whether their tests can run.
 */
import { spawnSync } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';

/** Held while installing; also serialises the harnesses' other one-time machine set-up. */
export const INSTALL_LOCK = path.join(os.tmpdir(), 'cgstep-apt.lock');

/** The packages of pkgs that dpkg does not show as installed ("ii"). */
export function missingPackages(pkgs: string[]): string[] {
  const r = spawnSync('dpkg-query', ['-W', '-f', '${Package} ${db:Status-Abbrev}\n', ...pkgs], { encoding: 'utf8' });
  const ok = new Set(
    String(r.stdout ?? '')
      .split('\n')
      .filter((l) => /^\S+ ii/.test(l))
      .map((l) => l.split(' ')[0]),
  );
  return pkgs.filter((p) => !ok.has(p));
}

/**
 * Install pkgs (a no-op when another run did it while this one waited for the
 * lock). null when done; otherwise why not, with the end of apt-get's output.
 */
export function aptInstall(pkgs: string[], o: { noRecommends?: boolean; timeoutMs?: number } = {}): string | null {
  const list = pkgs.join(' ');
  const script = [
    'set -e',
    `done=$(dpkg-query -W -f '\${Package} \${db:Status-Abbrev}\\n' ${list} 2>/dev/null | grep -c ' ii' || true)`,
    `[ "$done" = "${pkgs.length}" ] && exit 0`,
    'made=0',
    // Debian's postinst would start munged, slurmd and slurmctld: policy-rc.d forbids it.
    "if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; made=1; fi",
    'trap \'[ "$made" = 1 ] && rm -f /usr/sbin/policy-rc.d\' EXIT',
    'export DEBIAN_FRONTEND=noninteractive',
    'apt-get update -qq',
    `apt-get install -y -q ${o.noRecommends ? '--no-install-recommends ' : ''}${list}`,
  ].join('\n');
  const r = spawnSync('flock', [INSTALL_LOCK, 'sh', '-c', script], { encoding: 'utf8', timeout: o.timeoutMs ?? 600_000 });
  if (r.status === 0) return null;
  const tail = `${r.stdout ?? ''}${r.stderr ?? ''}${r.error ? String(r.error) : ''}`.trim().split('\n').slice(-8).join('\n');
  return `installing ${list} failed (exit ${r.status ?? r.signal}):\n${tail}`;
}
