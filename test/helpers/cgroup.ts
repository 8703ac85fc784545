/**
 * test/helpers/cgroup: a private directory under the real cgroup2 mount for
 * one test, and its removal: every process below it killed by cgroup.kill
 * (which only reaches pids inside it), then rmdir bottom-up.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { findCgroup2Mount } from '../../src/cgroupfs/mount.js';

export const MOUNT = findCgroup2Mount().mountPoint;

export function makeTestRoot(name: string): string {
  const dir = path.join(MOUNT, `cgstep-test-${name}-${randomBytes(3).toString('hex')}`);
  fs.mkdirSync(dir);
  return dir;
}

function populated(dir: string): boolean {
  try {
    return /populated 1/.test(fs.readFileSync(path.join(dir, 'cgroup.events'), 'utf8'));
  } catch {
    return false;
  }
}

function rmdirTree(dir: string): void {
  let entries: fs.Dirent[] = [];
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true });
  } catch {
    return;
  }
  for (const e of entries) if (e.isDirectory()) rmdirTree(path.join(dir, e.name));
  try {
    fs.rmdirSync(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}

/** Kill everything in the test root (agent's infinity process and steps included) and remove it. */
/**
 * Where the agents of a test root keep their lock files (--lock-dir, set by
 * startAgent): beside it in the temp directory, removed with the root, so that
 * agents a test SIGKILLs leave nothing in the host's /run/cgstepd.
 */
export function testLockDir(root: string): string {
  return path.join(os.tmpdir(), `${path.basename(root)}.locks`);
}

export async function removeTestRoot(dir: string): Promise<void> {
  fs.rmSync(testLockDir(dir), { recursive: true, force: true });
  if (!fs.existsSync(dir)) return;
  // A frozen subtree still dies on cgroup.kill.
  fs.writeFileSync(path.join(dir, 'cgroup.kill'), '1');
  const deadline = Date.now() + 5000;
  while (populated(dir) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  rmdirTree(dir);
}
