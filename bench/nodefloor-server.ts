/**
 * bench/nodefloor-server: the kernel floor's syscalls behind a socket, from
 * the least Node.js can do: the yardstick for what the platform itself costs.
 *
 *   node [cgstepd's node flags] --import tsx bench/nodefloor-server.ts SOCKET SCOPE_DIR CONTROLLERS [PROGRAM.bin]
 *
 * It speaks cgstepd's wire format (one JSON object a line, answered by id),
 * so the benchmark drives it with the same client and the same cycle as the
 * agent. `task.place` makes exactly what bench/floor.c makes, with the same
 * system calls in the same order (mkdir; subtree_control at the job, the step
 * and user/; cgroup.procs; one /proc/PID/cgroup read; BPF_PROG_ATTACH of the
 * program loaded at start); `destroy` removes it bottom-up. Nothing is checked
 * or remembered: no peer credentials, schema, PID-reuse check, lock, event,
 * log line or recovery state, which is all the agent adds.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { bpfFlags, progAttach, progLoad } from '../src/devices/native.js';

const [socket, scope, controllers, programFile] = process.argv.slice(2);
const prog = programFile ? progLoad(fs.readFileSync(programFile), 'floor', programFile) : -1;

function put(dir: string, file: string, value: string): void {
  const fd = fs.openSync(path.join(dir, file), fs.constants.O_WRONLY);
  try {
    fs.writeSync(fd, value);
  } finally {
    fs.closeSync(fd);
  }
}

interface Paths {
  job: string;
  step: string;
  slurm: string;
  user: string;
  task: string;
}

function pathsOf(root: string, job: number): Paths {
  const j = path.join(root, `job_${job}`);
  const step = path.join(j, 'step_0');
  const user = path.join(step, 'user');
  return { job: j, step, slurm: path.join(step, 'slurm'), user, task: path.join(user, 'task_0') };
}

function place(p: Paths, pid: number): void {
  fs.mkdirSync(p.job);
  if (controllers) put(p.job, 'cgroup.subtree_control', controllers);
  fs.mkdirSync(p.step);
  if (controllers) put(p.step, 'cgroup.subtree_control', controllers);
  fs.mkdirSync(p.slurm);
  fs.mkdirSync(p.user);
  if (controllers) put(p.user, 'cgroup.subtree_control', controllers);
  fs.mkdirSync(p.task);
  put(p.task, 'cgroup.procs', String(pid));
  fs.readFileSync(`/proc/${pid}/cgroup`, 'utf8');
  if (prog >= 0) {
    const fd = fs.openSync(p.user, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
    try {
      progAttach(fd, p.user, prog, bpfFlags.ALLOW_MULTI);
    } finally {
      fs.closeSync(fd);
    }
  }
}

function destroy(p: Paths): void {
  for (const d of [p.task, p.user, p.slurm, p.step, p.job]) fs.rmdirSync(d);
}

function answer(line: string): string {
  const m = JSON.parse(line) as { id: number; op: string; job: number; pid?: number };
  try {
    const p = pathsOf(scope, m.job);
    if (m.op === 'task.place') place(p, m.pid!);
    else if (m.op === 'destroy') destroy(p);
    else if (m.op !== 'hello') throw new Error(`unknown op ${m.op}`);
    return JSON.stringify({ id: m.id, ok: true, result: {} });
  } catch (err) {
    return JSON.stringify({ id: m.id, ok: false, error: { code: 'EIO', message: (err as Error).message } });
  }
}

const server = net.createServer((c) => {
  let buf = '';
  c.setEncoding('utf8');
  c.on('data', (d: string) => {
    buf += d;
    for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      c.write(answer(line) + '\n');
    }
  });
  c.on('error', () => c.destroy());
});
server.listen(socket, () => process.stdout.write('ready\n'));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
