/**
 * A user's connect loop against the log: every admin connection is logged,
 * another uid's at most once a second with a count, so journald's rate limit
 * is never spent on one user's connects.
 */
import test from 'ava';
import { nodeOutputAs, withTwoUsers } from '../helpers/users.js';

const ctx = withTwoUsers(test, 'conlog');

/** As the user: connect and close for `ms`, printing how many connections were made. */
const LOOP = `
const net = require('node:net');
const [socket, ms] = process.argv.slice(1);
const end = Date.now() + Number(ms);
let n = 0;
(function next() {
  if (Date.now() > end) { console.log(n); return; }
  const s = net.connect(socket);
  s.on('connect', () => { n++; s.destroy(); next(); });
  s.on('error', () => next());
})();`;

test.serial("a user's connect loop leaves at most a line a second; root's connections are each logged", async (t) => {
  const before = ctx.agent.logLines().length;
  const t0 = Date.now();
  const made = Number(await nodeOutputAs(ctx.alice, [], LOOP, [ctx.agent.socket, '2500']));
  const secs = (Date.now() - t0) / 1000;
  t.true(made > 50, `only ${made} connections made`);
  const c = await ctx.agent.client();
  t.teardown(() => c.close());
  await c.request('hello', {});
  const lines = ctx.agent.logLines().slice(before).filter((l) => l.msg === 'connection accepted');
  const hers = lines.filter((l) => l.peerUid === ctx.alice.uid);
  t.true(hers.length >= 1 && hers.length <= Math.ceil(secs) + 1, `${hers.length} lines for ${made} connections in ${secs} s`);
  t.true(hers.every((l) => Number.isInteger(l.acceptedSinceLastLog) && l.acceptedSinceLastLog >= 1));
  t.true(lines.some((l) => l.peerUid === 0), "root's connection is logged");
});
