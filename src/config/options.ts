/**
 * config/options: the agent's settled options, after the command line, the
 * CGSTEP_* environment and cgroup.conf have been merged (command line wins,
 * then environment, then cgroup.conf, then defaults). Pure data.
 */
import type { CgroupConf } from './cgroupconf.js';

export interface AgentOptions {
  socket: string;
  /** The socket file's mode (default: see rpc's socketModeFor). */
  socketMode?: number;
  /** The socket file's group, as a gid. */
  socketGroup?: number;
  cgroupRoot?: string;
  /** Where the one-agent-per-cgroup-root lock files live (default /run/cgstepd). */
  lockDir?: string;
  nodeName?: string;
  slice: string;
  ignoreSystemd: boolean;
  ignoreSystemdOnFailure: boolean;
  dbusAddress?: string;
  conf: CgroupConf;
  confWarnings: string[];
  /** cgroup.conf keys set but not supported (warned once at start, shown in status). */
  confUnsupported?: string[];
  /** The cgroup.conf read (`--config`), for status and the log; absent: defaults only. */
  configFile?: string;
  logLevel: string;
  /** uids that may act on everything, as root may (e.g. SlurmUser). */
  operatorUids: number[];
  allowUids: number[];
  readOnlyGids: number[];
  gresConf?: string;
  devicePolicy: 'open' | 'closed';
  ignoreMissingControllers: boolean;
  maxConnections: number;
  /** Connections at once per uid that is neither root nor an operator. */
  maxUserConnections: number;
  /** Live jobs one uid that is neither root nor an operator may own (its own requests are refused past it). */
  maxUserJobs?: number;
  /** Live steps, in all its jobs, one such uid may own. */
  maxUserSteps?: number;
  maxUserTasks?: number;
  /** Non-admin connections idle this long are closed, ms. */
  idleTimeoutMs: number;
  /** How long destroy and freeze wait for the kernel, ms. */
  waitTimeoutMs: number;
  /** How often orphans are collected, ms. */
  orphanIntervalMs: number;
  /** [ADDR:]PORT or unix:PATH for Prometheus /metrics; off when absent. */
  metrics?: string;
  /** A scrape is served from a snapshot at most this old, seconds. */
  metricsMaxAgeSec?: number;
  /** Concurrent /metrics connections. */
  metricsMaxConnections?: number;
  /** Bearer token a scrape must send (read from --metrics-token-file). */
  metricsToken?: string;
  /** Per-task series (off by default: cardinality). */
  metricsTasks: boolean;
  /** Read /proc/PID/cgroup back after every move. */
  verifyMoves?: boolean;
}

export function scopeNameFor(nodeName?: string): string {
  return nodeName ? `${nodeName}_slurmstepd.scope` : 'slurmstepd.scope';
}
