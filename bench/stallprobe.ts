/**
 * bench/stallprobe: the agent's longest event-loop stall, seen from a process
 * of its own: `hello` on one connection, a new one 1 ms after each answer; the
 * slowest answer is about the longest the agent's loop was held (plus one round
 * trip). A separate process, so the work of whoever drives the load (reading
 * megabytes of /metrics or list) is not counted as the agent's; the 1 ms pause
 * keeps the probe itself from taking a core.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { CgstepClient } from '../src/rpc/client.js';

export class StallProbe {
  private constructor(private readonly child: ChildProcess) {}

  static async start(socket: string): Promise<StallProbe> {
    const child = fork(fileURLToPath(import.meta.url), [socket], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    await new Promise<void>((resolve, reject) => {
      child.once('message', () => resolve());
      child.once('exit', (c) => reject(new Error(`stall probe exited with ${c}`)));
    });
    return new StallProbe(child);
  }

  /** The longest `hello` while fn ran. */
  async during<T>(fn: () => Promise<T>): Promise<{ result: T; maxStallMs: number }> {
    this.child.send('start');
    await new Promise((r) => this.child.once('message', r));
    const result = await fn();
    this.child.send('stop');
    const maxStallMs = await new Promise<number>((r) => this.child.once('message', (m) => r(Number(m))));
    return { result, maxStallMs };
  }

  close(): void {
    this.child.kill();
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url) && process.send) {
  const c = await CgstepClient.connect(process.argv[2], { timeoutMs: 600000 });
  let running = false;
  let max = 0;
  let loop: Promise<void> = Promise.resolve();
  process.on('message', async (m) => {
    if (m === 'start') {
      running = true;
      max = 0;
      loop = (async () => {
        while (running) {
          const t0 = performance.now();
          await c.request('hello', {});
          max = Math.max(max, performance.now() - t0);
          await new Promise((r) => setTimeout(r, 1));
        }
      })();
      process.send!('started');
    } else if (m === 'stop') {
      running = false;
      await loop;
      process.send!(String(max));
    }
  });
  process.send('ready');
  process.on('disconnect', () => process.exit(0));
}
