/**
 * scope/backends: the two scope backends, scope/systemd and scope/mkdir, as
 * registry candidates. The work is in scope/lifecycle.ts; this file says when
 * each is usable, why it was chosen, and whether a failure may fall through.
 */
import type { Backend, Candidate } from '../backends/registry.js';
import { AgentError } from '../errors.js';
import { createScopeWithMkdir, createScopeWithSystemd, systemdBooted, type ScopeOptions, type ScopeState } from './lifecycle.js';

export interface ScopeBackend extends Backend {
  readonly state: ScopeState;
}

export interface ScopeContext {
  scope: ScopeOptions;
  /** An explicit bus address was given (--dbus-address or DBUS_SYSTEM_BUS_ADDRESS). */
  busGiven: boolean;
}

function backend(type: string, name: string, make: () => Promise<ScopeState>): ScopeBackend {
  let state: ScopeState | null = null;
  return {
    type,
    name,
    version: '1.0',
    get state() {
      if (!state) throw new AgentError('EINTERNAL', `${type} not initialised`);
      return state;
    },
    async init() {
      state = await make();
    },
    // Stopping the agent leaves the scope, its infinity process and every step running.
    async fini() {},
  };
}

export const systemdScope: Candidate<ScopeContext, ScopeBackend> = {
  type: 'scope/systemd',
  name: 'delegated scope from systemd over D-Bus',
  version: '1.0',
  usable: (c) => (c.scope.ignoreSystemd ? 'IgnoreSystemd is set' : !c.busGiven && !systemdBooted() ? 'no systemd on this node (/run/systemd/system is absent)' : null),
  reason: (c) => (c.busGiven ? 'D-Bus address given' : 'systemd runs this node'),
  create: (c) => backend('scope/systemd', 'delegated scope from systemd over D-Bus', () => createScopeWithSystemd(c.scope)),
  fallback: (c) => c.scope.ignoreSystemdOnFailure,
};

export const mkdirScope: Candidate<ScopeContext, ScopeBackend> = {
  type: 'scope/mkdir',
  name: 'scope made with mkdir (no systemd)',
  version: '1.0',
  usable: () => null,
  reason: (c) => (c.scope.ignoreSystemd ? 'IgnoreSystemd is set' : !c.busGiven && !systemdBooted() ? 'no systemd on this node' : 'IgnoreSystemdOnFailure fallback'),
  create: (c) => backend('scope/mkdir', 'scope made with mkdir (no systemd)', () => createScopeWithMkdir(c.scope)),
};
