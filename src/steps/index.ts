/**
 * steps: jobs, steps and tasks: create, constrain, account, signal, destroy,
 * recover. Owns the layout below the node scope; reaches the kernel only
 * through cgroupfs, and devices only through the DevicePort it is handed.
 */
export * from './names.js';
export * from './limits.js';
export * from './tree.js';
export * from './signals.js';
export { TreeWatcher } from './events.js';
export { TAKE_BACK, type JobAccess } from './access.js';
export * from './orphans.js';
export type { LayoutIssue, LayoutReport } from './adopt.js';
export * from './owners.js';
