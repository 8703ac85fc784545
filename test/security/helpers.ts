/**
 * test/security/helpers: what the attack tests share: many live steps made
 * quickly through the protocol, root's status latency sampled while an
 * attack runs, and the /proc facts attacks name (a process's cgroup, its
 * threads, a kernel thread).
 */
import fs from 'node:fs';
import net from 'node:net';
import { CgstepClient } from '../../src/rpc/client.js';

/** n steps (jobs of 10 steps each), pipelined over a few connections; returns the job ids. */
export async function makeSteps(socket: string, n: number, firstJob = 100000): Promise<string[]> {
  const jobs = Math.ceil(n / 10);
  const ids = Array.from({ length: jobs }, (_, i) => String(firstJob + i));
  const conns = 4;
  await Promise.all(
    Array.from({ length: conns }, async (_, k) => {
      const c = await CgstepClient.connect(socket, { timeoutMs: 120000 });
      try {
        for (let j = k; j < jobs; j += conns) {
          const steps = Math.min(10, n - j * 10);
          await Promise.all(Array.from({ length: steps }, (_, s) => c.request('step.create', { job: ids[j], step: s })));
        }
      } finally {
        c.close();
      }
    }),
  );
  return ids;
}

/**
 * Root asks `status` every intervalMs until stopped, each answer timed from the
 * request: on one kept connection (as the SPANK plugin keeps one per
 * slurmstepd), or with fresh: true on a new connection each time (connect time
 * counts: that is what a full set of connection slots would delay). Returns
 * the worst latency, the count and any failures.
 */
export function sampleRootStatus(socket: string, opts: { intervalMs?: number; fresh?: boolean } = {}): { stop: () => Promise<{ worstMs: number; samples: number; failures: string[] }> } {
  let running = true;
  let worstMs = 0;
  let samples = 0;
  const failures: string[] = [];
  const once = async (kept: CgstepClient | null) => {
    const c = kept ?? (await CgstepClient.connect(socket, { timeoutMs: 10000 }));
    try {
      await c.request('status', {});
    } finally {
      if (!kept) c.close();
    }
  };
  const loop = (async () => {
    const kept = opts.fresh ? null : await CgstepClient.connect(socket, { timeoutMs: 10000 });
    while (running) {
      const t0 = performance.now();
      try {
        await once(kept);
      } catch (err) {
        failures.push((err as Error).message);
      }
      worstMs = Math.max(worstMs, performance.now() - t0);
      samples++;
      await new Promise((r) => setTimeout(r, opts.intervalMs ?? 100));
    }
    kept?.close();
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
      return { worstMs: Math.round(worstMs), samples, failures };
    },
  };
}

/** A raw connection (no client-side checks), errors ignored. */
export function rawConnect(socket: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(socket);
    s.on('error', () => undefined);
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

/** The "0::" line of /proc/PID/cgroup. */
export function cgroupOf(pid: number): string {
  return fs.readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n').find((l) => l.startsWith('0::'))!.slice(3);
}

/** The process's thread ids other than its own pid (waits until it has one). */
export async function threadsOf(pid: number): Promise<number[]> {
  for (let i = 0; i < 200; i++) {
    const t = fs.readdirSync(`/proc/${pid}/task`).map(Number).filter((x) => x !== pid);
    if (t.length) return t;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`process ${pid} has no second thread`);
}

/** Some kernel thread other than kthreadd (a child of pid 2). */
export function aKernelThread(): number {
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d) || d === '2') continue;
    try {
      const st = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
      if (st.slice(st.lastIndexOf(')') + 2).split(' ')[1] === '2') return Number(d);
    } catch {
      /* gone */
    }
  }
  throw new Error('no kernel thread found');
}
