/**
 * The README's TypeScript client example, run as written against a real agent:
 * only the socket path and the package name are pointed at this checkout,
 * and `pid` / `pid2` are two sleeps of the test's own.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { makeTestRoot, removeTestRoot } from '../helpers/cgroup.js';
import { killPid, spawnSleeper, startAgent } from '../helpers/agent.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** The README's one ```ts block. */
function clientExample(): string {
  const blocks = [...fs.readFileSync(path.join(REPO, 'README.md'), 'utf8').matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]);
  if (blocks.length !== 1) throw new Error(`expected one ts block in README.md, found ${blocks.length}`);
  return blocks[0];
}

test("the README's client example runs against a real agent: each request succeeds and the tasks land in their leaves", async (t) => {
  const root = makeTestRoot('readme-client');
  t.teardown(() => removeTestRoot(root));
  // The example sets a memory limit; hosts without the memory controller in cgroup v2 skip it (README: Set up).
  const a = await startAgent({ root, args: ['--ignore-systemd', '--ignore-missing-controllers'] });
  t.teardown(() => a.stop());
  const kids = [spawnSleeper(), spawnSleeper()];
  t.teardown(() => kids.forEach((k) => killPid(k.pid)));
  const code = clientExample()
    .replace("'/run/cgstepd/cgstepd.sock'", JSON.stringify(a.socket))
    .replace("'cgstep/dist/rpc/client.js'", JSON.stringify(path.join(REPO, 'dist/rpc/client.js')));
  t.true(code.includes(a.socket) && code.includes(path.join(REPO, 'dist')), 'the example names the default socket and the package path');
  const program = `const [pid, pid2] = ${JSON.stringify(kids.map((k) => k.pid))};\n${code}\nc.close();\n`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', program], { encoding: 'utf8', timeout: 30000 });
  t.is(r.status, 0, r.stderr);
  const leafOf = (pid: number) => fs.readFileSync(`/proc/${pid}/cgroup`, 'utf8').trim();
  t.regex(leafOf(kids[0].pid!), /\/job_12\/step_2\/user\/task_0$/);
  t.regex(leafOf(kids[1].pid!), /\/job_12\/step_2\/user\/task_1$/);
  const c = await a.client();
  t.teardown(() => c.close());
  await c.request('destroy', { job: 12, force: true });
});
