/**
 * config/size: human sizes ("64M", "4G", "1024") to bytes, and back.
 * Suffixes are binary (K=1024), as Slurm's and the kernel's are. The unit of a
 * bare number is the caller's: bytes in the protocol, MiB on the command line
 * (as Slurm's --mem).
 */
import { AgentError } from '../errors.js';

const UNITS: Record<string, number> = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4, P: 1024 ** 5 };

export function parseSize(text: string, what = 'size', bareUnit: '' | 'M' = ''): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:i?B)?\s*$/i.exec(text);
  if (!m) throw new AgentError('EINVAL', `${what}: expected a size like 512M or 4G, got ${JSON.stringify(text)}`);
  const unit = m[2] === '' && !/B\s*$/i.test(text) ? bareUnit : m[2].toUpperCase();
  const v = Math.floor(Number(m[1]) * UNITS[unit]);
  if (!Number.isSafeInteger(v)) throw new AgentError('EINVAL', `${what}: ${text} is too large`);
  return v;
}

export function formatSize(bytes: number): string {
  for (const u of ['P', 'T', 'G', 'M', 'K'] as const) {
    const f = UNITS[u];
    if (bytes >= f && bytes % f === 0) return `${bytes / f}${u}`;
  }
  return String(bytes);
}
