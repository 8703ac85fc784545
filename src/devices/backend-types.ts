/**
 * devices/backend-types: what every device backend (devices/ebpf, devices/none)
 * is and what it is given, so neither backend defines the other's interface.
 */
import type { Backend } from '../backends/registry.js';
import type { DevicePort } from '../steps/tree.js';

export interface DeviceSupport {
  supported: boolean;
  replace: boolean;
  reason?: string;
  /** The mode of a request that names none (devices/ebpf). */
  defaultPolicy?: 'open' | 'closed';
  /** The gres.conf inventory, one line per gres name (devices/ebpf). */
  gres?: string[];
  /** Device control is on (cgroup.conf ConstrainDevices, yes unless written no). */
  constrainDevices?: boolean;
  /**
   * Every job gets a job-level program from the moment it exists (the default
   * policy with the node's gres denied except its allocation): true with a gres
   * inventory or in closed mode.
   */
  everyJob?: boolean;
  /** Why the gres devices are not confined as gres.conf seems to mean, in words (status lists them as degraded). */
  problems?: string[];
}

export interface DeviceBackend extends Backend, DevicePort {
  readonly support: DeviceSupport;
}

export interface DeviceContext {
  constrainDevices: boolean;
  /** ConstrainDevices=yes was written in cgroup.conf: BPF is then required. */
  devicesRequired: boolean;
  /** Why BPF device control cannot be used, or null when it can. */
  bpfUnavailable: () => string | null;
}
