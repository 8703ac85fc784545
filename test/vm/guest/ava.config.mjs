// ava config for the tests that run inside the VM (test/vm/vm.ts boots it).
// Their files end in .guest.ts so that the host's `npm test` (test/**/*.test.ts)
// never picks them up. Run from the repository root, in the guest:
//   node node_modules/ava/entrypoints/cli.mjs --config test/vm/guest/ava.config.mjs --tap FILE
export default {
  files: ['test/vm/guest/*.guest.ts'],
  extensions: { ts: 'module' },
  nodeArguments: ['--import=tsx'],
  workerThreads: false,
  // One file at a time and serial tests inside: the cpu.max and OOM checks
  // measure the guest's two vCPUs and its memory.
  concurrency: 1,
  timeout: '3m',
  cache: false,
};
