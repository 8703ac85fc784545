/**
 * steps/accounting: the accounting/cgroup backend: a job's, step's or task's
 * usage read from its cgroup files (cpu.stat, memory.*, pids.current, io.stat)
 * at the moment it is asked for. Keeps nothing between reads.
 */
import type { Backend, Candidate } from '../backends/registry.js';
import { readStats, type CgroupStats } from '../cgroupfs/index.js';

export interface AccountingBackend extends Backend {
  read(dir: string): CgroupStats;
}

export const cgroupAccounting: Candidate<unknown, AccountingBackend> = {
  type: 'accounting/cgroup',
  name: 'usage from the cgroup v2 files',
  version: '1.0',
  usable: () => null,
  reason: () => 'the cgroup tree is the only source',
  create: () => ({ type: 'accounting/cgroup', name: 'usage from the cgroup v2 files', version: '1.0', read: readStats, init: async () => {}, fini: async () => {} }),
};
