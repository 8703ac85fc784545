/**
 * bench/systemd: systemd as the per-step manager, for comparison. One
 * transient scope per step (StartTransientUnit with Delegate, DevicePolicy,
 * DeviceAllow, MemoryMax, the same running process), then the process is moved
 * out and the unit stopped and waited for until systemd has unloaded it; all
 * against the private systemd 252 sandbox the tests use. Raw dbus-next
 * messages, as src/systemd does, with JobRemoved awaited for each job.
 */
import fs from 'node:fs';
import dbus from 'dbus-next';
import { startSandbox } from '../test/harness/systemd-sandbox.js';
import path from 'node:path';
import { summarize, type Summary } from './lib.js';
import * as native from '../src/devices/native.js';

/** The scope's directory under the sandbox's cgroup root (found by name: the slice depends on the manager). */
function findDir(root: string, name: string): string | null {
  for (const e of fs.readdirSync(root, { withFileTypes: true })) {
    if (!e.isDirectory()) continue;
    const p = path.join(root, e.name);
    if (e.name === name) return p;
    const hit = findDir(p, name);
    if (hit) return hit;
  }
  return null;
}

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

const { Message, Variant, MessageType } = dbus;
const DEST = 'org.freedesktop.systemd1';
const PATH = '/org/freedesktop/systemd1';
const IFACE = 'org.freedesktop.systemd1.Manager';

export async function systemdSection(cycles: number): Promise<SystemdResult> {
  const sb = await startSandbox({ name: 'bench' });
  const bus = dbus.sessionBus({ busAddress: sb.busAddress });
  const jobs = new Map<string, (result: string) => void>();
  try {
    await bus.call(new Message({ destination: 'org.freedesktop.DBus', path: '/org/freedesktop/DBus', interface: 'org.freedesktop.DBus', member: 'AddMatch', signature: 's', body: [`type='signal',interface='${IFACE}',member='JobRemoved'`] }));
    await bus.call(new Message({ destination: DEST, path: PATH, interface: IFACE, member: 'Subscribe' }));
    // A job may finish before its method reply has been handled: keep early results.
    const early = new Map<string, string>();
    bus.on('message', (m: any) => {
      if (m.type !== MessageType.SIGNAL || m.member !== 'JobRemoved') return;
      const w = jobs.get(m.body[1]);
      if (w) w(m.body[3]);
      else early.set(m.body[1], m.body[3]);
    });
    const call = async (member: string, signature: string, body: unknown[]) => (await bus.call(new Message({ destination: DEST, path: PATH, interface: IFACE, member, signature, body })))!.body;
    const waitJob = (job: string) =>
      new Promise<string>((resolve) => {
        const r = early.get(job);
        if (r !== undefined) {
          early.delete(job);
          return resolve(r);
        }
        jobs.set(job, (res) => {
          jobs.delete(job);
          resolve(res);
        });
      });
    const p = await sb.spawn(['sleep', '3600']);
    const park = sb.hostPath('/harness');
    const out: number[] = [];
    let checked = { devicePrograms: 0, scopeDir: '' };
    for (let i = 0; i < cycles + 20; i++) {
      const name = `bench-step-${i}.scope`;
      const t0 = performance.now();
      const props = [
        ['PIDs', new Variant('au', [p.pid])],
        ['Delegate', new Variant('b', true)],
        ['DevicePolicy', new Variant('s', 'closed')],
        ['DeviceAllow', new Variant('a(ss)', [['/dev/null', 'rw'], ['/dev/zero', 'rw'], ['/dev/urandom', 'r'], ['char-195', 'rw'], ['/dev/full', 'rw'], ['/dev/tty', 'rw'], ['/dev/ptmx', 'rw'], ['block-8', 'r']])],
        ['MemoryMax', new Variant('t', BigInt(1 << 30))],
      ];
      let job: string = (await call('StartTransientUnit', 'ssa(sv)a(sa(sv))', [name, 'fail', props, []]))[0];
      const started = await waitJob(job);
      if (started !== 'done') throw new Error(`start ${name}: ${started}\n${sb.logTail(10)}`);
      if (i === 0) {
        const dir = findDir(sb.cgroupDir, name);
        if (!dir) throw new Error(`systemd started ${name} but its cgroup is not under ${sb.cgroupDir}`);
        checked = { devicePrograms: programsOn(dir), scopeDir: path.relative(sb.cgroupDir, dir) };
      }
      fs.writeFileSync(`${park}/cgroup.procs`, String(p.pid));
      try {
        job = (await call('StopUnit', 'ss', [name, 'replace']))[0];
        await waitJob(job);
      } catch {
        /* an emptied scope may already be gone */
      }
      // Gone: GetUnit fails once systemd has unloaded it.
      for (;;) {
        try {
          await call('GetUnit', 's', [name]);
          await new Promise((r) => setTimeout(r, 1));
        } catch {
          break;
        }
      }
      if (i >= 20) out.push(performance.now() - t0);
    }
    p.kill('SIGKILL');
    return { ...summarize(out), ...checked };
  } finally {
    bus.disconnect();
    await sb.stop();
  }
}
