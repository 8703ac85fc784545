/**
 * backends/registry: replaceable parts of the agent, in Slurm's plugin style.
 *
 * Each backend has a type "<kind>/<name>" (scope/systemd, devices/ebpf,
 * accounting/cgroup...), a human name and a version, and init/fini called once,
 * in kind order at start and in reverse at stop. For each kind the registered
 * candidates are tried in order: the first whose `usable()` says yes is
 * initialised; if its init fails and the candidate allows it, the next one is
 * tried (IgnoreSystemdOnFailure is this), else start-up stops with its error.
 * Adding a backend: write one module implementing Backend for its kind and
 * register it in builtinRegistry (src/agent.ts). This module owns the
 * selection, nothing else.
 */
import type { Logger } from 'pino';
import { AgentError } from '../errors.js';

export type Kind = 'scope' | 'devices' | 'accounting';
export const KIND_ORDER: readonly Kind[] = ['scope', 'devices', 'accounting'];

export interface BackendIdentity {
  /** "<kind>/<name>", e.g. "scope/systemd". */
  type: string;
  name: string;
  version: string;
}

export interface Backend extends BackendIdentity {
  init(): Promise<void>;
  fini(): Promise<void>;
}

export interface Candidate<C, B extends Backend = Backend> extends BackendIdentity {
  /** null when usable; otherwise why not (shown in status when skipped). */
  usable(ctx: C): string | null;
  /** Why it was chosen, in words for `cgstep status`. */
  reason(ctx: C): string;
  create(ctx: C): B;
  /** May a failed init fall through to the next candidate? */
  fallback?(ctx: C, err: Error): boolean;
}

export interface Active { kind: Kind; type: string; name: string; version: string; reason: string; fellBackFrom?: string }

export class Registry<C> {
  private candidates = new Map<Kind, Candidate<C, any>[]>();
  private started: { kind: Kind; backend: Backend; reason: string; fellBackFrom?: string }[] = [];

  register(kind: Kind, c: Candidate<C, any>): void {
    if (!c.type.startsWith(`${kind}/`)) throw new AgentError('EINTERNAL', `backend type ${c.type} does not belong to kind ${kind}`);
    const list = this.candidates.get(kind) ?? [];
    list.push(c);
    this.candidates.set(kind, list);
  }

  /** Select and init one backend per kind, in KIND_ORDER. */
  async start(ctx: C, log: Logger): Promise<void> {
    for (const kind of KIND_ORDER) {
      const list = this.candidates.get(kind) ?? [];
      let chosen = false;
      let note = '';
      let fellBackFrom: string | undefined;
      for (const c of list) {
        const why = c.usable(ctx);
        if (why) {
          log.debug({ backend: c.type, why }, 'backend not usable');
          continue;
        }
        const backend = c.create(ctx);
        try {
          await backend.init();
        } catch (err) {
          if (c.fallback?.(ctx, err as Error)) {
            note = ` (after ${c.type} failed: ${(err as Error).message})`;
            fellBackFrom = `${c.type}: ${(err as Error).message}`;
            log.warn({ backend: c.type, err }, 'backend failed to start; trying the next one');
            continue;
          }
          await this.stop(log);
          throw err;
        }
        const reason = c.reason(ctx) + note;
        this.started.push({ kind, backend, reason, fellBackFrom });
        log.info({ backend: c.type, version: c.version, reason }, 'backend started');
        chosen = true;
        break;
      }
      if (!chosen) {
        await this.stop(log);
        throw new AgentError('ENOTSUP', `no usable ${kind} backend`);
      }
    }
  }

  get<B extends Backend>(kind: Kind): B {
    const s = this.started.find((x) => x.kind === kind);
    if (!s) throw new AgentError('EINTERNAL', `no ${kind} backend started`);
    return s.backend as B;
  }

  active(): Active[] {
    return this.started.map(({ kind, backend, reason, fellBackFrom }) => ({ kind, type: backend.type, name: backend.name, version: backend.version, reason, ...(fellBackFrom ? { fellBackFrom } : {}) }));
  }

  /** fini in reverse order; errors are logged, not thrown (stopping must finish). */
  async stop(log: Logger): Promise<void> {
    for (const s of this.started.reverse()) {
      try {
        await s.backend.fini();
      } catch (err) {
        log.error({ backend: s.backend.type, err }, 'backend fini failed');
      }
    }
    this.started = [];
  }
}
