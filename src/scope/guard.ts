/**
 * scope/guard: keeps the node scope alive while the agent runs and is the one
 * holder of its current state. Every second it checks the infinity process
 * (replaced when it dies) and the scope directory; a scope stopped or emptied
 * behind the agent's back is made again through the same backend, and
 * 'recreated' is emitted so the step tree can re-read it. Whoever needs the
 * scope's path, infinity pid or controllers reads `guard.state`, so nobody
 * keeps a stale copy after a re-creation.
 */
import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import type { ScopeBackend } from './backends.js';
import { repairScope, type ScopeOptions, type ScopeState } from './lifecycle.js';

export class ScopeGuard extends EventEmitter<{ recreated: [ScopeState] }> {
  private timer: NodeJS.Timeout | null = null;
  private running = false;
  private current: ScopeState;

  constructor(
    private readonly opts: ScopeOptions,
    private readonly backend: ScopeBackend,
    private readonly log: Logger,
  ) {
    super();
    this.current = backend.state;
  }

  get state(): ScopeState {
    return this.current;
  }

  start(intervalMs = 1000): void {
    this.timer = setInterval(() => void this.check(), intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** One check; overlapping calls are skipped (a re-creation may take a while). */
  async check(): Promise<void> {
    if (this.running) return;
    this.running = true;
    try {
      const r = await repairScope(this.opts, this.current, () => this.recreate());
      this.current = r.state;
      if (r.action !== 'ok') this.log.info({ action: r.action, scope: r.state.path, infinityPid: r.state.infinityPid }, 'scope guard acted');
      if (r.action === 'recreated') this.emit('recreated', r.state);
    } catch (err) {
      this.log.error({ err }, 'cannot restore the scope or its infinity process');
    } finally {
      this.running = false;
    }
  }

  private async recreate(): Promise<ScopeState> {
    this.log.error({ scope: this.current.path, mode: this.current.mode }, 'the scope directory is gone (unit stopped or emptied behind the agent); creating it again');
    const fallbackReason = this.current.fallbackReason;
    await this.backend.init();
    const next = this.backend.state;
    if (fallbackReason && !next.fallbackReason) next.fallbackReason = fallbackReason;
    return next;
  }
}
