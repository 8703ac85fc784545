/**
 * cgroupfs: the kernel's cgroup v2 files, nothing else.
 *
 * Owns: finding the cgroup2 mount, mkdir/rmdir, the interface files
 * (cgroup.procs, cgroup.subtree_control, cgroup.kill, cgroup.freeze,
 * cgroup.events, controller files and stats), watching those files, and the
 * lock that keeps a second agent off a cgroup root. Must not know about jobs, steps,
 * systemd, devices or the socket: callers pass directories and values.
 */
export * from './files.js';
export * from './lock.js';
export * from './mount.js';
export * from './ops.js';
export * from './stats.js';
export * from './xattr.js';
export * from './wait.js';
export * from './watch.js';
