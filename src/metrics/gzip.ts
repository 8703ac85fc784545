/**
 * metrics/gzip: a scrape's gzip body (Prometheus asks for one) without
 * compressing megabytes per scrape. A snapshot's text is compressed once, off
 * the event loop, as a raw deflate stream ended by a full flush (no final
 * block); each scrape compresses only the agent's own few lines as a second
 * raw deflate stream that continues the first, and the trailer's CRC-32 runs
 * on over both. The result is one gzip member: some clients (curl) read only
 * the first member of a concatenation.
 */
import zlib from 'node:zlib';
import { promisify } from 'node:util';

const deflateRaw = promisify(zlib.deflateRaw);
/** Magic, deflate, no flags, no time, no extra flags, OS unknown. */
const HEADER = Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);

/** A text compressed for continuation: its deflate blocks, its CRC-32 and its length. */
export interface GzipPrefix {
  deflated: Buffer;
  crc: number;
  bytes: number;
}

export async function gzipPrefix(chunks: readonly Buffer[]): Promise<GzipPrefix> {
  const text = Buffer.concat(chunks);
  const deflated = await deflateRaw(text, { level: 1, finishFlush: zlib.constants.Z_FULL_FLUSH });
  return { deflated, crc: zlib.crc32(text), bytes: text.length };
}

/** The gzip member of the prefix's text followed by `tail`, in pieces to write in order. */
export function gzipWith(p: GzipPrefix, tail: Buffer): Buffer[] {
  const trailer = Buffer.alloc(8);
  trailer.writeUInt32LE(zlib.crc32(tail, p.crc) >>> 0, 0);
  trailer.writeUInt32LE((p.bytes + tail.length) % 2 ** 32, 4);
  return [HEADER, p.deflated, zlib.deflateRawSync(tail, { level: 1 }), trailer];
}

/** Whether an Accept-Encoding header takes gzip (a q of 0 refuses it). */
export function acceptsGzip(header: string | undefined): boolean {
  return (header ?? '').split(',').some((part) => {
    const [coding, ...params] = part.split(';').map((s) => s.trim().toLowerCase());
    if (coding !== 'gzip' && coding !== 'x-gzip') return false;
    const q = params.find((x) => x.startsWith('q='));
    return q === undefined || Number(q.slice(2)) > 0;
  });
}
