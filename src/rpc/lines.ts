/**
 * rpc/lines: a connection's bytes cut into request lines, one line when it is
 * asked for. Nothing is split ahead of need: a peer that sends a 64 KiB read
 * of tiny lines costs the agent those bytes, not tens of thousands of strings
 * made at once; the server takes lines only as fast as it runs them.
 * Pure bookkeeping: no sockets.
 */

/** What next() gives for a line longer than the limit. */
export const TOO_LONG = Symbol('too long');

const NL = 10;

export class LineReader {
  /** Unread bytes, oldest first; parts[0] is unread from `pos`. */
  private parts: Buffer[] = [];
  private pos = 0;
  private unread = 0;
  /** Where the search for the next newline goes on: parts before scanPart hold none; scanBase is scanPart's offset in the unread bytes. */
  private scanPart = 0;
  private scanBase = 0;

  constructor(private readonly max: number) {}

  /** Unread bytes (a line being received, or lines not taken yet). */
  get pending(): number {
    return this.unread;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.parts.push(chunk);
    this.unread += chunk.length;
    // A line sent a byte at a time: keep the list short (one copy of what is unread every 1,024 reads).
    if (this.parts.length > 1024) {
      this.parts = [Buffer.concat([this.parts[0].subarray(this.pos), ...this.parts.slice(1)])];
      this.pos = this.scanPart = this.scanBase = 0;
    }
  }

  /** Is a complete line waiting? */
  hasLine(): boolean {
    return this.find() >= 0;
  }

  /** The next complete line without its newline; null when none has ended yet; TOO_LONG past the limit. */
  next(): string | null | typeof TOO_LONG {
    const at = this.find();
    if (at < 0) return this.unread > this.max ? TOO_LONG : null;
    if (at > this.max) return TOO_LONG;
    const text = this.take(at).toString('utf8');
    this.take(1);
    return text;
  }

  clear(): void {
    this.parts = [];
    this.pos = this.unread = this.scanPart = this.scanBase = 0;
  }

  /** Offset of the next newline in the unread bytes, or -1; each byte is looked at about once. */
  private find(): number {
    for (let i = this.scanPart; i < this.parts.length; i++) {
      const p = this.parts[i];
      const start = i === 0 ? this.pos : 0;
      const nl = p.indexOf(NL, start);
      if (nl >= 0) return this.scanBase + nl - start;
      this.scanBase += p.length - start;
      this.scanPart = i + 1;
    }
    return -1;
  }

  /** The first n unread bytes, consumed. */
  private take(n: number): Buffer {
    this.scanPart = this.scanBase = 0;
    this.unread -= n;
    const first = this.parts[0];
    if (first.length - this.pos > n) {
      this.pos += n;
      return first.subarray(this.pos - n, this.pos);
    }
    const out = Buffer.allocUnsafe(n);
    let i = 0;
    for (let w = 0; w < n; ) {
      const p = this.parts[i];
      const k = Math.min(n - w, p.length - this.pos);
      p.copy(out, w, this.pos, this.pos + k);
      w += k;
      this.pos += k;
      if (this.pos === p.length) {
        i++;
        this.pos = 0;
      }
    }
    this.parts.splice(0, i);
    return out;
  }
}
