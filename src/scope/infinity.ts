/**
 * scope/infinity: the process that keeps the node scope populated.
 *
 * Starts build/Release/cgstep-infinity (native/infinity.c: pause() forever,
 * oom_score_adj -1000), finds the one already in `system/` after a restart, and
 * replaces it if it dies. Never signals anything but the pid it started or found.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { AgentError } from '../errors.js';

const here = path.dirname(fileURLToPath(import.meta.url));
/** The same relative path works from src/scope (tsx) and dist/scope (built). */
export const INFINITY_BIN = path.resolve(here, '../../build/Release/cgstep-infinity');

/** Start a detached infinity process; it outlives the agent. */
export async function startInfinity(bin = INFINITY_BIN): Promise<number> {
  if (!fs.existsSync(bin)) throw new AgentError('ENOENT', `infinity helper ${bin} is missing; run npm install (it builds native/infinity.c)`);
  const child = spawn(bin, [], { detached: true, stdio: 'ignore' });
  const pid = await new Promise<number>((resolve, reject) => {
    child.once('error', (err) => reject(new AgentError('EIO', `cannot start ${bin}: ${err.message}`)));
    child.once('spawn', () => resolve(child.pid!));
  });
  child.unref();
  return pid;
}
