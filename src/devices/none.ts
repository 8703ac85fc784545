/**
 * devices/none: the device backend that confines nothing, as Slurm's "none"
 * plugins do. Chosen when device control is off (ConstrainDevices=no) or BPF
 * is unavailable and the configuration does not demand it. A request with
 * device rules is accepted and its rules are not enforced; the reply says so
 * (devicesIgnored) and `cgstep status` lists the backend with its reason.
 */
import type { Candidate } from '../backends/registry.js';
import type { DeviceBackend, DeviceContext } from './backend-types.js';

export const noneDevices: Candidate<DeviceContext, DeviceBackend> = {
  type: 'devices/none',
  name: 'no device control',
  version: '1.0',
  usable: (c) => (c.devicesRequired && c.bpfUnavailable() ? `ConstrainDevices=yes needs BPF device programs: ${c.bpfUnavailable()}` : null),
  reason: (c) => (!c.constrainDevices ? 'ConstrainDevices=no' : `BPF device control unavailable: ${c.bpfUnavailable() ?? 'unknown'}`),
  create: (c) => ({
    type: 'devices/none',
    name: 'no device control',
    version: '1.0',
    support: { supported: false, replace: false, reason: c.constrainDevices ? (c.bpfUnavailable() ?? 'not selected') : 'ConstrainDevices=no', constrainDevices: c.constrainDevices, everyJob: false },
    enforcing: false,
    prepare: (_req, level) => ({ level }),
    jobDefault: () => null,
    checkWithin: () => undefined,
    widen: () => null,
    apply: () => null,
    describe: () => null,
    init: async () => {},
    fini: async () => {},
  }),
};
