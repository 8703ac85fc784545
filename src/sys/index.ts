/**
 * sys: the native boundary, one module per kind. addon.ts loads the project's
 * N-API addon (bpf(), xattrs, inotify) and types its errors; libc.ts binds the
 * few libc calls Node lacks through koffi (datagram sockets for sd_notify,
 * getsockopt for peer credentials, flock, fcntl); logsink.ts writes the log
 * lines to stdout without a thread hop and without waiting on a slow
 * reader. Owns signatures and errno names, never policy: callers in
 * src/cgroupfs, src/devices, src/rpc, src/systemd and bin/cgstepd decide
 * what the calls mean.
 */
export * from './addon.js';
export * from './libc.js';
export * from './logsink.js';
