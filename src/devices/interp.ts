/**
 * devices/interp: a userspace interpreter for exactly the instructions the
 * compiler emits (32-bit loads from the context, w &= K, w >>= K, r = K,
 * if r != K, if r == K, if r > K (unsigned), if r & K, goto, exit). The
 * kernel offers no BPF_PROG_TEST_RUN for device programs, so tests run the
 * emitted bytes here against the rule semantics. It is strict like the verifier where that matters: an unknown
 * opcode, a read of an unwritten register, a context read out of bounds, a
 * backward or out-of-program jump, or falling off the end is an error, never
 * a verdict. Pure; used by tests and by nothing on the agent's path.
 */
import { OP, decode, type Insn } from './compiler.js';
import { ACC_ALL, DEV_BLOCK, DEV_CHAR, type DeviceNode } from './rules.js';

export class InterpError extends Error {
  constructor(pc: number, why: string) {
    super(`interp: pc ${pc}: ${why}`);
    this.name = 'InterpError';
  }
}

/** The kernel's struct bpf_cgroup_dev_ctx for one request. */
export function devCtx(d: DeviceNode, access: number): Buffer {
  const ctx = Buffer.alloc(12);
  ctx.writeUInt32LE(((access & ACC_ALL) << 16) | (d.type === 'b' ? DEV_BLOCK : DEV_CHAR), 0);
  ctx.writeUInt32LE(d.major >>> 0, 4);
  ctx.writeUInt32LE(d.minor >>> 0, 8);
  return ctx;
}

const U64 = (1n << 64n) - 1n;

/** Run a decoded program on a context; returns r0 and the number of instructions executed. */
export function runInsns(prog: Insn[], ctx: Buffer): { r0: bigint; steps: number } {
  const regs: (bigint | null)[] = new Array(11).fill(null);
  regs[1] = 0n; // r1 = ctx (its offset base); only loads through it are allowed
  let ctxReg = 1;
  let pc = 0;
  let steps = 0;
  const read = (r: number): bigint => {
    const v = regs[r];
    if (v === null || v === undefined) throw new InterpError(pc, `r${r} read before written`);
    if (r === ctxReg) throw new InterpError(pc, `r${r} is the context pointer, not a scalar`);
    return v;
  };
  for (;;) {
    if (pc < 0 || pc >= prog.length) throw new InterpError(pc, 'fell off the program');
    const x = prog[pc];
    steps++;
    if (steps > prog.length) throw new InterpError(pc, 'more steps than instructions (a loop)');
    const jump = (taken: boolean) => {
      if (x.off < 0) throw new InterpError(pc, 'backward jump');
      pc += 1 + (taken ? x.off : 0);
    };
    switch (x.code) {
      case OP.LDXW: {
        if (x.src !== ctxReg) throw new InterpError(pc, `load through r${x.src}, not the context`);
        if (x.off < 0 || x.off + 4 > ctx.length || x.off % 4 !== 0) throw new InterpError(pc, `context read at ${x.off} out of bounds`);
        if (x.dst === ctxReg) ctxReg = -1;
        regs[x.dst] = BigInt(ctx.readUInt32LE(x.off));
        pc++;
        break;
      }
      case OP.AND32K:
        regs[x.dst] = (read(x.dst) & 0xffffffffn) & BigInt(x.imm >>> 0);
        pc++;
        break;
      case OP.RSH32K:
        if (x.imm < 0 || x.imm > 31) throw new InterpError(pc, `shift by ${x.imm}`);
        regs[x.dst] = (read(x.dst) & 0xffffffffn) >> BigInt(x.imm);
        pc++;
        break;
      case OP.MOV64K:
        if (x.dst === ctxReg) ctxReg = -1;
        regs[x.dst] = BigInt(x.imm) & U64; // imm is sign-extended to 64 bits
        pc++;
        break;
      case OP.JNEK:
        jump(read(x.dst) !== (BigInt(x.imm) & U64));
        break;
      case OP.JEQK:
        jump(read(x.dst) === (BigInt(x.imm) & U64));
        break;
      case OP.JGTK: // unsigned 64-bit compare with the sign-extended immediate
        jump(read(x.dst) > (BigInt(x.imm) & U64));
        break;
      case OP.JSETK:
        jump((read(x.dst) & (BigInt(x.imm) & U64)) !== 0n);
        break;
      case OP.JA:
        jump(true);
        break;
      case OP.EXIT:
        return { r0: read(0), steps };
      default:
        throw new InterpError(pc, `opcode 0x${x.code.toString(16)} is not one the compiler emits`);
    }
  }
}

/** The program's verdict for a device request: true when it returns 1. */
export function runProgram(insns: Buffer | Insn[], d: DeviceNode, access: number): boolean {
  const prog = Buffer.isBuffer(insns) ? decode(insns) : insns;
  const { r0 } = runInsns(prog, devCtx(d, access));
  if (r0 !== 0n && r0 !== 1n) throw new InterpError(-1, `returned ${r0}, not 0 or 1`);
  return r0 === 1n;
}

/** The conditional jumps the compiler emits. */
export const CONDITIONAL: ReadonlySet<number> = new Set([OP.JNEK, OP.JEQK, OP.JGTK, OP.JSETK]);

/** Instructions no path from the entry reaches (the verifier rejects these). */
export function unreachable(insns: Buffer | Insn[]): number[] {
  const prog = Buffer.isBuffer(insns) ? decode(insns) : insns;
  const seen = new Array<boolean>(prog.length).fill(false);
  const work = [0];
  while (work.length > 0) {
    const pc = work.pop()!;
    if (pc < 0 || pc >= prog.length || seen[pc]) continue;
    seen[pc] = true;
    const x = prog[pc];
    if (x.code === OP.EXIT) continue;
    if (x.code === OP.JA) work.push(pc + 1 + x.off);
    else if (CONDITIONAL.has(x.code)) work.push(pc + 1, pc + 1 + x.off);
    else work.push(pc + 1);
  }
  return seen.flatMap((s, i) => (s ? [] : [i]));
}

/** Unsigned 64-bit bounds of a register, as the verifier tracks them (null: not written). */
type Bounds = { lo: bigint; hi: bigint } | null;

/**
 * What the verifier's register bounds say about a program: `decided`, the
 * conditional jumps one of whose outcomes no path can take (a wasted test),
 * and `dead`, the instructions no path reaches once the bounds are taken into
 * account (the kernel removes or hard-wires those, so the program it keeps,
 * xlated, would no longer equal ours). Bounds as the verifier tracks them: a
 * 32-bit context load is [0, 2^32-1], w &= K is [0, K], w >>= K shifts the
 * bounds, r = K is a constant; `if r > K` splits the bounds, `if r == K`
 * makes r K on the equal side and, when K is a bound, moves that bound on the
 * other (kernels since 6.8 do). The bounds of a register reached by several
 * jumps are joined, so this is exact where every instruction has one way in
 * (the compiler's search) and errs towards "possible" elsewhere.
 */
export function boundsCheck(insns: Buffer | Insn[]): { decided: number[]; dead: number[] } {
  const prog = Buffer.isBuffer(insns) ? decode(insns) : insns;
  const U32 = 0xffffffffn;
  const into: (Bounds[] | null)[] = new Array(prog.length).fill(null);
  const join = (a: Bounds, b: Bounds): Bounds => (a && b ? { lo: a.lo < b.lo ? a.lo : b.lo, hi: a.hi > b.hi ? a.hi : b.hi } : null);
  const flow = (pc: number, to: number, regs: Bounds[]) => {
    if (to <= pc || to >= prog.length) throw new InterpError(pc, `jump to ${to}`);
    const cur = into[to];
    into[to] = cur ? cur.map((b, i) => join(b, regs[i])) : regs;
  };
  const decided: number[] = [];
  const dead: number[] = [];
  into[0] = new Array<Bounds>(11).fill(null);
  for (let pc = 0; pc < prog.length; pc++) {
    const regs = into[pc];
    if (!regs) {
      dead.push(pc);
      continue;
    }
    const x = prog[pc];
    const k = BigInt(x.imm) & U64;
    const r = regs[x.dst];
    const set = (b: Bounds) => regs.map((v, i) => (i === x.dst ? b : v));
    const need = (): { lo: bigint; hi: bigint } => {
      if (!r) throw new InterpError(pc, `r${x.dst} read before written`);
      return r;
    };
    const branch = (taken: Bounds[] | null, fall: Bounds[] | null) => {
      if (!taken || !fall) decided.push(pc);
      if (taken) flow(pc, pc + 1 + x.off, taken);
      if (fall) flow(pc, pc + 1, fall);
    };
    switch (x.code) {
      case OP.LDXW:
        flow(pc, pc + 1, set({ lo: 0n, hi: U32 }));
        break;
      case OP.AND32K: {
        const b = need();
        flow(pc, pc + 1, set({ lo: 0n, hi: b.hi <= U32 && b.hi < (k & U32) ? b.hi : k & U32 }));
        break;
      }
      case OP.RSH32K: {
        const b = need();
        flow(pc, pc + 1, set({ lo: b.hi <= U32 ? b.lo >> k : 0n, hi: (b.hi > U32 ? U32 : b.hi) >> k }));
        break;
      }
      case OP.MOV64K:
        flow(pc, pc + 1, set({ lo: k, hi: k }));
        break;
      case OP.JNEK:
      case OP.JEQK: {
        const b = need();
        const eq = k < b.lo || k > b.hi ? null : set({ lo: k, hi: k });
        const ne = b.lo === k && b.hi === k ? null : set({ lo: b.lo === k ? b.lo + 1n : b.lo, hi: b.hi === k ? b.hi - 1n : b.hi });
        if (x.code === OP.JNEK) branch(ne, eq);
        else branch(eq, ne);
        break;
      }
      case OP.JGTK: {
        const b = need();
        const gt = b.hi > k ? set({ lo: b.lo > k ? b.lo : k + 1n, hi: b.hi }) : null;
        const le = b.lo <= k ? set({ lo: b.lo, hi: b.hi < k ? b.hi : k }) : null;
        branch(gt, le);
        break;
      }
      case OP.JSETK: {
        const b = need();
        // Bits r may have: every bit up to the highest of hi (all known for a constant).
        const may = b.lo === b.hi ? b.lo : (1n << BigInt(b.hi.toString(2).length)) - 1n;
        branch((may & k) !== 0n ? regs : null, b.lo !== b.hi || (b.lo & k) === 0n ? regs : null);
        break;
      }
      case OP.JA:
        flow(pc, pc + 1 + x.off, regs);
        break;
      case OP.EXIT:
        break;
      default:
        throw new InterpError(pc, `opcode 0x${x.code.toString(16)} is not one the compiler emits`);
    }
  }
  return { decided, dead };
}
