/**
 * `npm run test:vm`: the full-node VM lane on its own (test/vm/README.md).
 * Builds dist/ as `npm test` does, then runs the lane's host test file under
 * ava (verbose unless other ava options are given, e.g. `npm run test:vm -- --tap`),
 * and prints the lane's wall time. Exits with ava's status.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { REPO } from './vm.js';

const t0 = performance.now();
const addon = path.join(REPO, 'build', 'Release');
if (!fs.existsSync(addon) || !fs.readdirSync(addon).some((f) => f.endsWith('.node'))) {
  console.error(`test:vm: no native addon in ${addon}: run \`npm ci\` first (it builds the addon and dist/)`);
  process.exit(1);
}
const tsc = spawnSync(process.execPath, [path.join(REPO, 'node_modules/typescript/bin/tsc'), '-p', path.join(REPO, 'tsconfig.json')], { stdio: 'inherit', cwd: REPO });
if (tsc.status !== 0) process.exit(tsc.status ?? 1);
const extra = process.argv.slice(2);
const ava = spawnSync(process.execPath, [path.join(REPO, 'node_modules/ava/entrypoints/cli.mjs'), 'test/vm/vm.test.ts', ...(extra.length ? extra : ['--verbose'])], { stdio: 'inherit', cwd: REPO });
console.error(`test:vm: ${((performance.now() - t0) / 1000).toFixed(1)} s in all, ava exit ${ava.status}`);
process.exit(ava.status ?? 1);
