/**
 * metrics/listen: where /metrics is served, from `--metrics`. Kept apart from
 * the exporter (loaded only with --metrics) so the agent checks the option before
 * it touches anything.
 *
 *   9102            127.0.0.1:9102 (loopback)
 *   0.0.0.0:9102    every IPv4 address
 *   [::1]:9102      an IPv6 address, in brackets
 *   unix:/run/cgstepd/metrics.sock   a Unix socket (its mode decides who may scrape)
 */
import { ConfigError } from '../errors.js';

export type MetricsListen = { host: string; port: number } | { path: string };

const HINT = 'give PORT, ADDR:PORT, [IPV6]:PORT or unix:/ABSOLUTE/PATH';

export function parseListen(spec: string): MetricsListen {
  const s = spec.trim();
  if (s.startsWith('unix:')) {
    const p = s.slice('unix:'.length);
    if (!p.startsWith('/') || p.includes('\0')) throw new ConfigError(`--metrics ${JSON.stringify(spec)}: a Unix socket path must be absolute`, HINT);
    return { path: p };
  }
  const m = /^(?:(?:\[([0-9a-fA-F:.]+)\]|([^:[\]\s]+)):)?(\d{1,5})$/.exec(s);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new ConfigError(`--metrics: expected [ADDR:]PORT, got ${JSON.stringify(spec)}`, HINT);
  return { host: m[1] ?? m[2] ?? '127.0.0.1', port };
}
