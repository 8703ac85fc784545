/**
 * cgroupfs/xattr: extended attributes on cgroup directories (kernfs keeps
 * trusted.* and user.* values in memory), through the project's addon since
 * Node has none. The agent keeps what a restart must find again here (a
 * directory's device policy, a job's owner); systemd marks delegation here.
 */
import { KernelError, isErrno } from '../errors.js';
import { addonCall } from '../sys/addon.js';

/** An xattr's value; null when the directory has none of that name or its filesystem keeps no such xattrs. */
export function getXattr(dir: string, name: string): Buffer | null {
  try {
    // The addon answers null for an absent xattr; a build from before that throws ENODATA, caught here.
    return addonCall('getxattr', dir, (a) => a.xattrGet(dir, name));
  } catch (err) {
    if (err instanceof KernelError && isErrno(err, 'ENODATA', 'ENOTSUP', 'EOPNOTSUPP')) return null;
    throw err;
  }
}

export function setXattr(dir: string, name: string, value: Buffer): void {
  addonCall('setxattr', dir, (a) => a.xattrSet(dir, name, value));
}

/** Remove an xattr; false when there was none. */
export function removeXattr(dir: string, name: string): boolean {
  try {
    addonCall('removexattr', dir, (a) => a.xattrRemove(dir, name));
    return true;
  } catch (err) {
    if (err instanceof KernelError && err.errno === 'ENODATA') return false;
    throw err;
  }
}
