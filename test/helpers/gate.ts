/**
 * test/helpers/gate: how a suite that needs what a machine may lack (root and
 * BPF, the systemd sandbox, Slurm) picks test.serial or test.serial.skip, and
 * says on stderr, loudly, why it skips.
 */
import test from 'ava';

/** test.serial, or test.serial.skip where a suite cannot run. */
export type GatedTest = typeof test.serial | typeof test.serial.skip;

/** test.serial when support.ok; else test.serial.skip and a notice naming what, the file (import.meta.url) and the reason. */
export function gate(what: string, support: { ok: boolean; reason?: string | null }, file: string): { ok: boolean; test: GatedTest } {
  if (!support.ok) console.error(`\n*** ${what} unavailable, SKIPPING the tests in ${file}: ${support.reason ?? 'no reason given'} ***\n`);
  return { ok: support.ok, test: support.ok ? test.serial : test.serial.skip };
}
