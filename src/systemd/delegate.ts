/**
 * systemd/delegate: when cgstepd runs as a Delegate=yes service, move the
 * agent out of its unit's own cgroup into a child, as systemd's
 * DelegateSubgroup= (systemd 254+) would.
 *
 * Why: with delegation, systemd still owns the unit's own cgroup (its
 * attribute files, and what it decides to write there), and hands over only
 * what is *below* it. systemd rewrites the unit cgroup's attributes on
 * daemon-reload; systemd issue 40438 shows it writing cpuset.cpus/cpuset.mems
 * of a delegated unit's cgroup on every `systemctl daemon-reload`. Anything
 * the agent builds must therefore live below the unit cgroup, and by the
 * no-internal-process rule the unit cgroup cannot enable controllers for its
 * children while the agent's own pid sits in it (EBUSY). So the agent moves
 * itself to <unit cgroup>/agent first; the unit cgroup then has no processes
 * of its own and everything the agent does happens in the delegated subtree.
 *
 * Owns only the decision to move the agent: it has cgroupfs create `agent/`
 * and move the agent's pid (the whole thread group) there, then any other
 * process still in the unit's own cgroup (the service's own children). It
 * never touches the node scope (src/scope) nor anything outside the unit.
 */
import path from 'node:path';
import type { Logger } from 'pino';
import { getXattr, isWritable, makeDir, ownCgroup, procsOf, writeText } from '../cgroupfs/index.js';
import { AgentError, isErrno } from '../errors.js';
import { nameOf } from '../proc/index.js';

export const AGENT_SUBGROUP = 'agent';

export type DelegationEvidence = 'xattr' | 'invocation-id' | null;

/**
 * Is this unit cgroup delegated to us? systemd's system manager (251+) marks
 * delegated unit cgroups with the xattr trusted.delegate=1; later versions also
 * write user.delegate=1 (readable without CAP_SYS_ADMIN), which is also what
 * cg_is_delegated() in systemd reads, in that order. systemd 252's *user*
 * manager writes no xattrs at all (seen in the test sandbox). Without either
 * mark, fall back to: started by systemd (INVOCATION_ID set) and the unit's
 * cgroup.procs and cgroup.subtree_control writable.
 */
export function delegationOf(dir: string, env: NodeJS.ProcessEnv = process.env): DelegationEvidence {
  for (const name of ['trusted.delegate', 'user.delegate']) {
    if (getXattr(dir, name)?.toString('utf8') === '1') return 'xattr';
  }
  // systemd before 251 marks nothing. The fallback cannot tell such a systemd
  // from a newer one running us without Delegate=yes; the shipped unit sets
  // Delegate=yes, and a move into a subgroup of a non-delegated unit is harmless.
  if (!env.INVOCATION_ID) return null;
  return isWritable(path.join(dir, 'cgroup.procs')) && isWritable(path.join(dir, 'cgroup.subtree_control')) ? 'invocation-id' : null;
}

/**
 * When running as a delegated `.service`, create <own cgroup>/agent and move
 * this process (all its threads) there, and whatever else is still in the
 * unit's own cgroup after it. Returns the new absolute cgroup
 * directory, or null when not applicable (not a service, not delegated, or
 * already in a subgroup).
 */
export async function moveSelfIntoSubgroup(mountPoint: string, log: Logger): Promise<string | null> {
  const own = ownCgroup();
  if (own === null) {
    log.debug('no cgroup2 entry in /proc/self/cgroup: not moving the agent');
    return null;
  }
  if (!own.endsWith('.service')) {
    log.debug({ cgroup: own }, 'agent is not in a service cgroup: not moving it');
    return null;
  }
  const unitDir = path.join(mountPoint, own);
  const evidence = delegationOf(unitDir);
  if (!evidence) {
    log.info({ cgroup: own }, 'agent service is not delegated (no Delegate=yes): staying in its unit cgroup');
    return null;
  }
  const target = path.join(unitDir, AGENT_SUBGROUP);
  makeDir(target);
  // cgroup.procs moves the whole thread group (every Node and libuv thread).
  writeText(path.join(target, 'cgroup.procs'), String(process.pid));
  // Anything else still in the unit's own cgroup is the service's too (children
  // started before the move, ExecStartPre leftovers): they would keep the unit
  // cgroup an internal node with processes, so they follow the agent.
  const others: string[] = [];
  for (const pid of procsOf(unitDir)) {
    try {
      writeText(path.join(target, 'cgroup.procs'), String(pid));
      others.push(`${pid} (${nameOf(pid) ?? '?'})`);
    } catch (err) {
      // Exited meanwhile (ESRCH): nothing to move.
      if (!isErrno(err, 'ESRCH')) throw err;
    }
  }
  if (others.length) log.info({ moved: others }, 'moved the service\'s other processes along with the agent');
  const now = ownCgroup();
  if (now !== path.posix.join(own, AGENT_SUBGROUP)) {
    throw new AgentError('EIO', `moved the agent to ${target}, but /proc/self/cgroup says ${now}`);
  }
  log.info({ from: own, to: now, delegation: evidence }, 'agent moved into a subgroup of its delegated service cgroup (systemd owns the unit cgroup itself)');
  return target;
}
