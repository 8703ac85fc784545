/**
 * bench/systemd: systemd as the per-step manager, for comparison. One
 * transient scope per step (StartTransientUnit with Delegate, DevicePolicy,
 * DeviceAllow, MemoryMax, the same running process), then the process is moved
 * out and the unit stopped and waited for until systemd has unloaded it; all
 * against the private systemd 252 sandbox the tests use, through the agent's
 * own systemd client (src/systemd/manager.ts: each job's JobRemoved awaited).
 */
import fs from 'node:fs';
import path from 'node:path';
import { connectSystemd } from '../src/systemd/manager.js';
import * as native from '../src/devices/native.js';
import { startSandbox } from '../test/harness/systemd-sandbox.js';
import { summarize, type Summary } from './lib.js';

/** Device programs attached to a directory (to check systemd really confines devices). */
function programsOn(dir: string): number {
  const fd = native.openDir(dir);
  try {
    return native.progQuery(fd, dir).ids.length;
  } finally {
    native.closeFd(fd);
  }
}

export interface SystemdResult extends Summary { devicePrograms: number; scopeDir: string }

const DEVICE_ALLOW = [['/dev/null', 'rw'], ['/dev/zero', 'rw'], ['/dev/urandom', 'r'], ['char-195', 'rw'], ['/dev/full', 'rw'], ['/dev/tty', 'rw'], ['/dev/ptmx', 'rw'], ['block-8', 'r']];

/**
 * `between`, when given, runs after every block of 100 scopes (and once
 * before the first): run.ts measures the agent's place cycle there, so that
 * the two sides of systemd ÷ agent are measured in alternating blocks.
 */
export async function systemdSection(cycles: number, between?: () => Promise<void>): Promise<SystemdResult> {
  const sb = await startSandbox({ name: 'bench' });
  const m = await connectSystemd({ address: sb.busAddress, timeoutMs: 10000 });
  try {
    const p = await sb.spawn(['sleep', '3600']);
    const park = sb.hostPath('/harness');
    const out: number[] = [];
    let checked = { devicePrograms: 0, scopeDir: '' };
    await between?.();
    for (let i = 0; i < cycles + 20; i++) {
      const name = `bench-step-${i}.scope`;
      const t0 = performance.now();
      await m.startTransientScope({
        name,
        slice: 'app.slice',
        pids: [p.pid!],
        delegate: true,
        tasksMax: 'infinity',
        properties: [
          ['DevicePolicy', 's', 'closed'],
          ['DeviceAllow', 'a(ss)', DEVICE_ALLOW],
          ['MemoryMax', 't', BigInt(1 << 30)],
        ],
      });
      if (i === 0) {
        const dir = sb.hostPath((await m.getUnitState(name))!.controlGroup);
        checked = { devicePrograms: programsOn(dir), scopeDir: path.relative(sb.cgroupDir, dir) };
      }
      fs.writeFileSync(`${park}/cgroup.procs`, String(p.pid));
      try {
        await m.stopUnit(name);
      } catch {
        /* an emptied scope may already be gone */
      }
      // Gone: systemd has unloaded it.
      while ((await m.getUnitState(name)) !== null) await new Promise((r) => setTimeout(r, 1));
      if (i >= 20) out.push(performance.now() - t0);
      if (between && (i - 20) % 100 === 99) await between();
    }
    p.kill('SIGKILL');
    return { ...summarize(out), ...checked };
  } finally {
    await m.close();
    await sb.stop();
  }
}
