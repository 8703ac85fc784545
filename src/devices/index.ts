/**
 * devices: eBPF device control for cgroup directories.
 *
 * The public face of src/devices: rule syntax and semantics (rules.ts), Slurm's
 * gres.conf (gres.ts), the policy a request asks for (policy.ts), the compiler
 * to BPF_PROG_TYPE_CGROUP_DEVICE instructions with its disassembler and test
 * interpreter (compiler.ts, disasm.ts, interp.ts), and the DeviceController
 * that attaches programs (controller.ts, through native.ts and the addon).
 * Everything outside src/devices imports from here. This module holds no code.
 * Typical use:
 *   const ctl = new DeviceController(log); ctl.probe();
 *   const inv = loadGresConf('/etc/slurm/gres.conf', nodeName, log);
 *   ctl.apply(dir, buildRuleSet(req.devices, { inventory: inv, log }));
 */
export {
  ACC_ALL,
  ACC_MKNOD,
  ACC_READ,
  ACC_WRITE,
  accessMask,
  decide,
  formatRule,
  maskToAccess,
  parseRule,
  statDevice,
  type DeviceNode,
  type DeviceRule,
  type DeviceType,
  type ParseOptions,
  type RuleSet,
  type Verdict,
  type Wild,
} from './rules.js';
export { GresInventory, expandList, loadGresConf, parseGresConf, type GresParseOptions, type GresUnit } from './gres.js';
export { PSEUDO_DEVICES, buildRuleSet, checkRequestOverlap, type PolicyOptions } from './policy.js';
export {
  MAX_INSNS,
  checkOverlap,
  compile,
  decideNormal,
  emit,
  normalize,
  parsePolicy,
  compileNormal,
  serializePolicy,
  type Compiled,
  type NormalPolicy,
  type PolicyEntry,
  type Program,
} from './compiler.js';
export { disassemble } from './disasm.js';
export { runProgram, unreachable } from './interp.js';
export {
  DeviceController,
  POLICY_XATTR,
  PROG_PREFIX,
  loadedPrograms,
  type ApplyResult,
  type ControllerOptions,
  type DirDescription,
  type DirQuery,
  type ProbeResult,
} from './controller.js';
export { VerifierError, addonError, type ProgInfo } from './native.js';
export { DevicePathResolver, type PathResolverOptions } from './paths.js';
