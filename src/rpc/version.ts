/**
 * rpc/version: the protocol version, line limit and other constants of the
 * protocol, in a module with no dependencies, so that clients (the cgstep CLI
 * starts ~40 ms faster) and the agent's common path do not load the schema
 * library to learn them.
 */
import type { Op } from './protocol.js';

export const PROTOCOL_VERSION = '1.0';
export const MAX_LINE_BYTES = 64 * 1024;
/** The most tasks one task.place may carry: Slurm's MAX_TASKS_PER_NODE. */
export const MAX_PLACED_TASKS = 512;

/**
 * The admin socket beside the shared one (root's, 0600, opened to each
 * --operator-uid by an ACL; accepted without a rate): clients try it first,
 * so that no other user's connections queued on the shared socket stand
 * before root's or an operator's.
 */
export function adminSocketPath(socket: string): string {
  return `${socket}.admin`;
}

/** Ops that only read; a read-only peer may use these. */
export const READ_ONLY_OPS: ReadonlySet<Op> = new Set(['hello', 'status', 'list', 'stats', 'events']);

export function majorOf(v: string): number {
  return Number(v.split('.')[0]);
}

/** The cgstep release (package.json's version), for `--version` of both programs and `status`. */
export const AGENT_VERSION = '0.1.0';
