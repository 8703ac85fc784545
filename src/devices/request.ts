/**
 * devices/request: what a job, step or task asks of device control, as plain
 * types (the wire schema in src/rpc/protocol.ts is built from these).
 */

export type DevicePolicyMode = 'open' | 'closed';

export interface DeviceRequest {
  /** Rule text: "c 195:* rw", "a *:* rwm", or a device path "/dev/nvidia0" with optional access. */
  allow?: string[];
  deny?: string[];
  /**
   * gres devices allocated to this job/step: absolute device paths from gres.conf,
   * or "<name>:<index>" (the index-th File= of that gres name, 0-based, in gres.conf
   * order, which is how Slurm numbers CUDA_VISIBLE_DEVICES / SLURM_STEP_GPUS).
   */
  gres?: string[];
  /** "open" (default: everything not denied) or "closed" (pseudo-devices plus allow). */
  policy?: DevicePolicyMode;
}
