/**
 * bench/run: `npm run bench`. Runs every section, prints a table with ratios
 * measured in the same run, and writes bench/results.json. Not a test: no
 * section asserts a timing. BENCH_QUICK=1 shrinks every section (smoke run).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { cycleSection } from './cycle.js';
import { REPO, ms } from './lib.js';
import { scaleSection, throughputSection } from './scale.js';

const quick = process.env.BENCH_QUICK === '1';
const results: Record<string, unknown> = {
  date: new Date().toISOString(),
  machine: `${os.cpus().length} x ${os.cpus()[0]?.model ?? 'cpu'}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Linux ${os.release()}, Node ${process.version}`,
};

function line(s = '') {
  process.stdout.write(s + '\n');
}

line(`cgstep benchmarks — ${results.machine}`);

line('\n1-2. step cycle: agent over the socket vs the kernel floor (bench/floor.c), no device program');
const cyc = await cycleSection(quick ? 100 : 1000);
results.cycle = cyc;
line(`  agent  median ${ms(cyc.agent.median)}  p99 ${ms(cyc.agent.p99)}`);
line(`  floor  median ${ms(cyc.floor.median)}  p99 ${ms(cyc.floor.p99)}`);
line(`  agent / floor = ${cyc.ratio.toFixed(2)} (target <= 1.5)`);

line('\n4. throughput: concurrent clients creating and destroying steps');
const tput = await throughputSection(quick ? [1, 16] : [1, 4, 16, 64], quick ? 2 : 10);
results.throughput = tput;
for (const r of tput) line(`  ${String(r.clients).padStart(2)} clients: ${r.cyclesPerSec.toFixed(0).padStart(6)} cycles/s, p99 ${ms(r.p99)}`);

line('\n5. scale: live steps, RSS, cycle latency, restart');
const scale = await scaleSection(quick ? [0, 1000] : [0, 1000, 10000], quick ? 50 : 200);
results.scale = scale;
for (const r of scale) {
  line(`  ${String(r.steps).padStart(5)} steps: RSS ${r.rssMiB.toFixed(1)} MiB, cycle median ${ms(r.cycle.median)} p99 ${ms(r.cycle.p99)}, restart→ready ${r.restartReadyMs.toFixed(0)} ms, →list ${r.restartListMs.toFixed(0)} ms`);
}

fs.writeFileSync(path.join(REPO, 'bench/results.json'), JSON.stringify(results, null, 2) + '\n');
line('\nwrote bench/results.json');
