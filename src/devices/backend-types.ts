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
