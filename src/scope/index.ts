/**
 * scope: the node scope's lifecycle.
 *
 * Owns <root>/<slice>/<scope> itself (not what is below it): creating it
 * (through systemd, via the SystemdPort the agent hands in, or with mkdir),
 * adopting it after a restart, the infinity process in system/, and the
 * controllers enabled in the scope. Jobs and steps belong to src/steps; D-Bus
 * itself to src/systemd; cgroup files to src/cgroupfs.
 */
export * from './lifecycle.js';
export * from './backends.js';
export * from './infinity.js';
