/**
 * A user who listens first on a socket path must not receive root's requests:
 * the client checks the server's SO_PEERCRED uid before sending anything.
 */
import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { cli, killPid, waitFor } from '../helpers/agent.js';
import { addUser, nodeAs, removeUser, type TestUser } from '../helpers/users.js';

const ctx: { dir: string; user: TestUser } = {} as any;

test.before(() => {
  ctx.user = addUser('cgs_rpc');
  ctx.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgstep-spoof-'));
  // The attacker's own directory (as its home or a dir it made in /tmp): it may bind a socket there, nobody else may.
  fs.chownSync(ctx.dir, ctx.user.uid, ctx.user.gid);
});
test.after.always(() => {
  fs.rmSync(ctx.dir, { recursive: true, force: true });
  removeUser(ctx.user);
});

// Listens, answers every line as the agent would, and prints what it received.
const FAKE = `
const net = require('node:net');
net.createServer((c) => {
  c.on('error', () => {});
  c.on('data', (d) => { process.stdout.write('GOT ' + d); c.write(JSON.stringify({ id: 1, ok: true, result: { created: true } }) + '\\n'); });
}).listen(process.argv[1], () => process.stdout.write('LISTENING\\n'));
`;

test('the client refuses a server that is not root, before sending it anything', async (t) => {
  const sock = path.join(ctx.dir, 'cgstepd.sock');
  const fake = nodeAs(ctx.user, FAKE, [sock]);
  t.teardown(() => killPid(fake.pid));
  let out = '';
  fake.stdout!.on('data', (d) => (out += d));
  await waitFor(() => out.includes('LISTENING'), 10000, 'the fake server');
  const r = cli(sock, ['job', 'create', '5']);
  t.is(r.code, 1);
  t.regex(r.stderr, new RegExp(`EPERM: refusing to talk to .*served by uid ${ctx.user.uid}, not by root`));
  t.false(out.includes('GOT'), 'the fake server received a request');
  const trusted = cli(sock, ['job', 'create', '5'], { env: { ...process.env, CGSTEP_AGENT_UID: String(ctx.user.uid) } });
  t.is(trusted.code, 0, trusted.stderr);
});
