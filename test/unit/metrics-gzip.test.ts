/**
 * The gzip body of a scrape (src/metrics/gzip.ts): a prefix compressed once and
 * a tail compressed per scrape must make one gzip member that every decoder
 * reads whole (zlib here, curl against a real agent in test/ops/metrics), with
 * the right CRC-32 and length; Accept-Encoding is read as HTTP says.
 */
import test from 'ava';
import fc from 'fast-check';
import zlib from 'node:zlib';
import { acceptsGzip, gzipPrefix, gzipWith } from '../../src/metrics/gzip.js';

test('prefix + tail is one gzip member that decodes to the concatenation', async (t) => {
  await fc.assert(
    fc.asyncProperty(fc.array(fc.uint8Array({ maxLength: 70_000 }), { maxLength: 4 }), fc.uint8Array({ maxLength: 5000 }), async (chunks, tail) => {
      const bufs = chunks.map((c) => Buffer.from(c));
      const body = Buffer.concat(gzipWith(await gzipPrefix(bufs), Buffer.from(tail)));
      // zlib refuses a wrong CRC-32 or length, and would read a second member as more text.
      t.deepEqual(zlib.gunzipSync(body), Buffer.concat([...bufs, Buffer.from(tail)]));
      t.is(body.indexOf(Buffer.from([0x1f, 0x8b, 8]), 1), -1, 'no second gzip header');
    }),
    { numRuns: 60 },
  );
});

test('a text of repeated series lines shrinks', async (t) => {
  const line = (i: number) => `cgstep_step_memory_current_bytes{jobid="${i}",step="0",node="n1"} ${i * 4096}\n`;
  const text = Buffer.from(Array.from({ length: 20_000 }, (_, i) => line(i)).join(''));
  const body = Buffer.concat(gzipWith(await gzipPrefix([text]), Buffer.from('cgstep_jobs 1\n')));
  t.true(body.length * 5 < text.length, `${body.length} bytes for ${text.length}`);
});

test('Accept-Encoding: gzip and x-gzip taken, q=0 and other codings not', (t) => {
  for (const h of ['gzip', 'gzip, deflate', 'deflate, gzip;q=0.5', 'GZIP', 'x-gzip', 'br;q=1.0, gzip;q=0.1, *;q=0.1']) t.true(acceptsGzip(h), h);
  for (const h of [undefined, '', 'deflate', 'br', 'gzip;q=0', 'gzip;q=0.0', 'identity', 'gzipx']) t.false(acceptsGzip(h), String(h));
});
