/**
 * cgroupfs/mount: where the cgroup2 hierarchy is mounted, and whether a
 * directory really is on it. Reads /proc/self/mountinfo and statfs; writes nothing.
 */
import fs from 'node:fs';
import path from 'node:path';
import { AgentError, fromNodeError } from '../errors.js';

/** statfs f_type of a cgroup2 filesystem (linux/magic.h CGROUP2_SUPER_MAGIC). */
const CGROUP2_SUPER_MAGIC = 0x63677270;

export interface MountInfo { mountPoint: string; readOnly: boolean }

/** Parse mountinfo text; the first cgroup2 mount wins (pure v2 or hybrid /sys/fs/cgroup/unified). */
export function parseCgroup2Mount(mountinfo: string): MountInfo | null {
  return parseCgroup2Mounts(mountinfo)[0] ?? null;
}

/** Every cgroup2 mount, in mountinfo order (a later mount on the same point hides an earlier one). */
export function parseCgroup2Mounts(mountinfo: string): MountInfo[] {
  const out: MountInfo[] = [];
  for (const line of mountinfo.split('\n')) {
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const [fstype] = line.slice(sep + 3).split(' ');
    if (fstype !== 'cgroup2') continue;
    const fields = line.slice(0, sep).split(' ');
    const mountPoint = unescapeMountPath(fields[4]);
    const opts = fields[5]?.split(',') ?? [];
    out.push({ mountPoint, readOnly: opts.includes('ro') });
  }
  return out;
}

function unescapeMountPath(p: string): string {
  return p.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/**
 * The cgroup2 mount in use. In a private mount namespace a later cgroup2 mount
 * can hide an earlier one (a container mounting its own at /sys/fs/cgroup over
 * the host's hybrid /sys/fs/cgroup/unified), so the last entry whose path is
 * still a cgroup2 directory wins.
 */
export function findCgroup2Mount(): MountInfo {
  const text = fs.readFileSync('/proc/self/mountinfo', 'utf8');
  const m = parseCgroup2Mounts(text).filter((x) => isCgroup2(x.mountPoint)).pop();
  if (!m) throw new AgentError('ENOTSUP', 'no cgroup2 filesystem is mounted (looked in /proc/self/mountinfo); mount one or pass --cgroup-root');
  return m;
}

export function isCgroup2(dir: string): boolean {
  try {
    return fs.statfsSync(dir).type === CGROUP2_SUPER_MAGIC;
  } catch {
    return false;
  }
}

/**
 * Resolve the directory that plays the node's cgroup root. An explicit directory
 * must exist and be on cgroup2; its mount point is found by walking up while
 * the parent is still cgroup2.
 */
export function resolveCgroupRoot(explicit?: string): { root: string; mountPoint: string; readOnly: boolean } {
  if (!explicit) {
    const m = findCgroup2Mount();
    return { root: m.mountPoint, mountPoint: m.mountPoint, readOnly: m.readOnly };
  }
  const root = path.resolve(explicit);
  try {
    fs.statSync(root);
  } catch (err) {
    throw fromNodeError('stat', root, err);
  }
  if (!isCgroup2(root)) throw new AgentError('EINVAL', `--cgroup-root ${root} is not on a cgroup2 filesystem`);
  let mountPoint = root;
  while (mountPoint !== '/' && isCgroup2(path.dirname(mountPoint))) mountPoint = path.dirname(mountPoint);
  const same = parseCgroup2Mounts(fs.readFileSync('/proc/self/mountinfo', 'utf8')).filter((m) => m.mountPoint === mountPoint);
  return { root, mountPoint, readOnly: same.length ? same[same.length - 1].readOnly : false };
}
