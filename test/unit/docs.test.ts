/**
 * The README and the unit file say what the code does: exactly which options
 * have environment variables (from each program's --help), no variable that
 * means one thing to the agent and another to the client, and the STATUS= line
 * systemd shows.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { CGSTEP, CGSTEPD, REPO } from '../helpers/agent.js';

const envOf = (bin: string) => {
  const help = spawnSync(process.execPath, [bin, '--help'], { encoding: 'utf8' }).stdout.replace(/\s+/g, ' ');
  return new Set([...help.matchAll(/env: (CGSTEP_[A-Z_]+)/g)].map((m) => m[1]));
};

test('README lists exactly the variables --help shows, and agent and client share only CGSTEP_SOCKET (the same socket)', (t) => {
  const readme = fs.readFileSync(path.join(REPO, 'README.md'), 'utf8').replace(/\s+/g, ' ');
  const agentPara = /Every option of `cgstepd` can also be given in the environment as `CGSTEP_<OPTION>`: (.*?)\. The client's variables/.exec(readme)![1];
  const clientPara = /The client's variables are only for its global options: (.*?)\. The command line wins/.exec(readme)![1];
  const names = (text: string) => new Set([...text.matchAll(/`(CGSTEP_[A-Z_]+)/g)].map((m) => m[1]));
  const agent = envOf(CGSTEPD);
  const client = envOf(CGSTEP);
  t.deepEqual([...names(agentPara)].sort(), [...agent].sort());
  const documentedClient = names(clientPara);
  documentedClient.delete('CGSTEP_AGENT_UID'); // read by the client library, not an option
  t.deepEqual([...documentedClient].sort(), [...client].sort());
  t.deepEqual([...agent].filter((v) => client.has(v)), ['CGSTEP_SOCKET']);
});

test('the unit file and README show the STATUS= line the agent sends', (t) => {
  const src = fs.readFileSync(path.join(REPO, 'src/bin/cgstepd.ts'), 'utf8');
  t.true(src.includes('`${s.mode} mode, ${s.jobs} job(s), ${s.steps} step(s)'), 'the agent sends "<mode> mode, N job(s), M step(s)"');
  t.regex(fs.readFileSync(path.join(REPO, 'systemd/cgstepd.service'), 'utf8'), /Status: "systemd mode, N job\(s\), M step\(s\)"/);
  t.regex(fs.readFileSync(path.join(REPO, 'README.md'), 'utf8'), /Status: "systemd mode, 1 job\(s\), 1 step\(s\)"/);
});
