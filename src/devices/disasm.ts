/**
 * devices/disasm: eBPF instructions as text, in the kernel verifier's notation
 * (kernel/bpf/disasm.c: "6: (55) if r2 != 0x2 goto pc+4"), so a golden file
 * reads like `bpftool prog dump xlated` and a program read back from the kernel
 * (any program, not only ours) can be printed. Optional labels from the compiler
 * put a "; c 195:* allow rw" comment above the instruction where each entry starts.
 * Pure; owns no policy.
 */
import { decode, type Insn } from './compiler.js';

const ALU_OPS: Record<number, string> = {
  0x00: '+=', 0x10: '-=', 0x20: '*=', 0x30: '/=', 0x40: '|=', 0x50: '&=', 0x60: '<<=', 0x70: '>>=',
  0x90: '%=', 0xa0: '^=', 0xb0: '=', 0xc0: 's>>=',
};
const JMP_OPS: Record<number, string> = {
  0x10: '==', 0x20: '>', 0x30: '>=', 0x40: '&', 0x50: '!=', 0x60: 's>', 0x70: 's>=', 0xa0: '<', 0xb0: '<=', 0xc0: 's<', 0xd0: 's<=',
};
const SIZES: Record<number, string> = { 0x00: 'u32', 0x08: 'u16', 0x10: 'u8', 0x18: 'u64' };

const hex = (n: number): string => `0x${(n >>> 0).toString(16)}`;
const off = (n: number): string => (n < 0 ? `${n}` : `+${n}`);

/** One instruction (and, for a 16-byte ld_imm64, its second half) as text. */
export function formatInsn(x: Insn, second?: Insn): string {
  const cls = x.code & 0x07;
  const op = x.code & 0xf0;
  const srcX = (x.code & 0x08) !== 0;
  switch (cls) {
    case 0x04: // ALU (32-bit)
    case 0x07: { // ALU64
      const r = cls === 0x07 ? 'r' : 'w';
      if (op === 0x80) return `${r}${x.dst} = -${r}${x.dst}`;
      if (op === 0xd0) return `${r}${x.dst} = ${srcX ? 'be' : 'le'}${x.imm} ${r}${x.dst}`;
      const sym = ALU_OPS[op];
      if (!sym) return `invalid alu op ${hex(x.code)}`;
      return `${r}${x.dst} ${sym} ${srcX ? `${r}${x.src}` : `${x.imm}`}`;
    }
    case 0x05: // JMP
    case 0x06: { // JMP32
      const r = cls === 0x05 ? 'r' : 'w';
      if (op === 0x00) return cls === 0x05 ? `goto pc${off(x.off)}` : `gotol pc${off(x.imm)}`;
      if (op === 0x90 && cls === 0x05) return 'exit';
      if (op === 0x80 && cls === 0x05) return `call ${x.src === 1 ? 'pc' : ''}${x.src === 1 ? off(x.imm) : `#${x.imm}`}`;
      const sym = JMP_OPS[op];
      if (!sym) return `invalid jmp op ${hex(x.code)}`;
      return `if ${r}${x.dst} ${sym} ${srcX ? `${r}${x.src}` : hex(x.imm)} goto pc${off(x.off)}`;
    }
    case 0x01: { // LDX
      const size = SIZES[x.code & 0x18];
      if ((x.code & 0xe0) !== 0x60 || !size) return `invalid ldx ${hex(x.code)}`;
      return `r${x.dst} = *(${size} *)(r${x.src} ${off(x.off)})`;
    }
    case 0x03: { // STX
      const size = SIZES[x.code & 0x18];
      if ((x.code & 0xe0) !== 0x60 || !size) return `stx ${hex(x.code)} (atomic or invalid)`;
      return `*(${size} *)(r${x.dst} ${off(x.off)}) = r${x.src}`;
    }
    case 0x02: { // ST
      const size = SIZES[x.code & 0x18];
      if ((x.code & 0xe0) !== 0x60 || !size) return `invalid st ${hex(x.code)}`;
      return `*(${size} *)(r${x.dst} ${off(x.off)}) = ${x.imm}`;
    }
    case 0x00: { // LD
      if (x.code === 0x18 && second) {
        const v = (BigInt(second.imm >>> 0) << 32n) | BigInt(x.imm >>> 0);
        return `r${x.dst} = 0x${v.toString(16)}${x.src ? ` (src ${x.src})` : ''}`;
      }
      return `invalid ld ${hex(x.code)}`;
    }
    default:
      return `invalid ${hex(x.code)}`;
  }
}

/** A whole program, one "N: (op) text" line per instruction, labels as "; comment" lines. */
export function disassemble(insns: Buffer, labels?: Map<number, string>): string {
  const list = decode(insns);
  const lines: string[] = [];
  for (let i = 0; i < list.length; i++) {
    const label = labels?.get(i);
    if (label) lines.push(`; ${label}`);
    const x = list[i];
    const wide = x.code === 0x18 && i + 1 < list.length;
    lines.push(`${i}: (${x.code.toString(16).padStart(2, '0')}) ${formatInsn(x, wide ? list[i + 1] : undefined)}`);
    if (wide) i++;
  }
  return lines.join('\n') + '\n';
}
