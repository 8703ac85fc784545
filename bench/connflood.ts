/**
 * bench/connflood: root's `status` latency on its kept connection while other
 * uids connect and reset in tight loops (connect, one `hello` line, close with
 * SO_LINGER 0, again), from an allowed uid and from a uid with no role (its
 * connections are refused with a reason). Not part of `npm run bench`:
 *
 *   node --import tsx bench/connflood.ts          (root; LOOPS=4 SECONDS=10 by default)
 *
 * Each loop is a python3 process as the throwaway uid (Node cannot set
 * SO_LINGER on a Unix socket). Prints, per role, the connections the loops
 * made and root's median, p99 and worst `status` (every 20 ms, on a kept
 * connection and on a new connection each time: as root, through the admin
 * socket) while they ran.
 * The users are removed at the end. Not a test: nothing asserts a timing.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import { addUser, asUser, removeUser, type TestUser } from '../test/helpers/users.js';
import { benchRoot, removeRoot, sampleStatus, startAgent, summarize } from './lib.js';

const LOOPS = Number(process.env.LOOPS ?? 4);
const SECONDS = Number(process.env.SECONDS ?? 10);

const LOOP = `
import socket, struct, sys, time
path, secs = sys.argv[1], float(sys.argv[2])
end = time.time() + secs
n = failed = 0
while time.time() < end:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
    try:
        s.connect(path)
        s.send(b'{"v":"1.0","id":1,"op":"hello"}\\n')
    except OSError:
        failed += 1
    s.close()
    n += 1
print(n, failed)
`;

/** One loop as u; resolves with [connections, failed connects]. */
function loopAs(u: TestUser, socket: string): Promise<[number, number]> {
  const [cmd, ...args] = asUser(u, []);
  const p = spawn(cmd, [...args, '/usr/bin/python3', '-c', LOOP, socket, String(SECONDS)], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  p.stdout!.on('data', (d) => (out += d));
  return new Promise((resolve) => p.once('exit', () => resolve(out.trim().split(' ').map(Number) as [number, number])));
}

function fmt(lat: number[]): string {
  const s = summarize(lat);
  return `median ${s.median.toFixed(2)} ms, p99 ${s.p99.toFixed(1)} ms, worst ${Math.max(...lat).toFixed(1)} ms (${lat.length} samples)`;
}

async function flood(socket: string, u: TestUser, role: string): Promise<void> {
  let on = true;
  const samplers = [sampleStatus(socket, false, () => on, 20), sampleStatus(socket, true, () => on, 20)];
  const made = await Promise.all(Array.from({ length: LOOPS }, () => loopAs(u, socket)));
  on = false;
  const [kept, fresh] = await Promise.all(samplers);
  const conns = made.reduce((a, [n]) => a + n, 0);
  const failed = made.reduce((a, [, f]) => a + f, 0);
  console.log(`${role}: ${LOOPS} loops, ${conns} connections in ${SECONDS} s (${failed} connects failed)`);
  console.log(`  root's status, kept connection: ${fmt(kept)}`);
  console.log(`  root's status, new connection:  ${fmt(fresh)}`);
}

const root = benchRoot('connflood');
const allowed = addUser('cgs_bench');
const stranger = addUser('cgs_bench');
const dir = fs.mkdtempSync('/tmp/cgstep-connflood-');
fs.chmodSync(dir, 0o755);
try {
  const agent = await startAgent(root, ['--allow-uid', String(allowed.uid), '--ignore-missing-controllers'], dir);
  try {
    await flood(agent.socket, allowed, 'allowed uid');
    await flood(agent.socket, stranger, 'uid with no role');
  } finally {
    await agent.stop();
  }
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
  await removeRoot(root);
  removeUser(allowed);
  removeUser(stranger);
}
