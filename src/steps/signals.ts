/**
 * steps/signals: signal names and numbers as a controller may send them
 * ("TERM", "SIGTERM", "15"). Pure.
 */
import os from 'node:os';
import { AgentError } from '../errors.js';

export function resolveSignal(sig: string | number): { name: NodeJS.Signals; number: number } {
  const table = os.constants.signals as Record<string, number>;
  if (typeof sig === 'number' || /^\d+$/.test(sig)) {
    const n = Number(sig);
    const name = Object.keys(table).find((k) => table[k] === n);
    if (!name) throw new AgentError('EINVAL', `unknown signal number ${sig}`);
    return { name: name as NodeJS.Signals, number: n };
  }
  const upper = sig.toUpperCase();
  const name = upper.startsWith('SIG') ? upper : `SIG${upper}`;
  const n = table[name];
  if (n === undefined) throw new AgentError('EINVAL', `unknown signal ${JSON.stringify(sig)}`);
  return { name: name as NodeJS.Signals, number: n };
}
