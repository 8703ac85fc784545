/**
 * errors: the error types every layer shares.
 *
 * An AgentError carries a stable `code` that travels over the socket unchanged
 * (clients switch on it), a message for people, and, for errors that came from
 * the kernel, the path and errno that failed. Nothing here does I/O.
 */

/** Codes a client may see in `{ ok: false, error: { code } }`. */
export type ErrorCode =
  | 'EINVAL' // bad request: schema, ids, limits, rule syntax
  | 'ENOENT' // no such job, step, task or pid
  | 'EEXIST'
  | 'EPERM' // peer not allowed, or the kernel refused
  | 'EBUSY'
  | 'ETIMEDOUT'
  | 'ENOTSUP' // the node lacks a controller or BPF feature the request needs
  | 'EPROTO' // incompatible protocol version
  | 'E2BIG' // line or request too large
  | 'EMFILE'
  | 'ENOSPC'
  | 'EIO'
  | 'EINTERNAL';

export class AgentError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string) {
    super(message);
    this.name = 'AgentError';
    this.code = code;
  }
}

/** A failed system call on a named path: `op path: errno (message)`. */
export class KernelError extends AgentError {
  readonly path: string;
  readonly errno: string;
  readonly op: string;
  constructor(op: string, path: string, errno: string, detail?: string) {
    super(kernelCode(errno), `${op} ${path}: ${errno}${detail ? ` (${detail})` : ''}`);
    this.name = 'KernelError';
    this.op = op;
    this.path = path;
    this.errno = errno;
  }
}

/** A failed BPF_PROG_LOAD, with the verifier's log. */
export class VerifierError extends KernelError {
  readonly verifierLog: string;
  constructor(path: string, errno: string, log: string) {
    const lastLine = log.trim().split('\n').filter((l) => l && !l.startsWith('processed ')).pop();
    super('bpf(BPF_PROG_LOAD)', path, errno, lastLine ? `verifier: ${lastLine}` : undefined);
    this.name = 'VerifierError';
    this.verifierLog = log;
  }
}

const PASSTHROUGH: ReadonlySet<string> = new Set([
  'EINVAL', 'ENOENT', 'EEXIST', 'EPERM', 'EBUSY', 'ETIMEDOUT', 'E2BIG', 'EMFILE', 'ENOSPC', 'EIO',
]);

function kernelCode(errno: string): ErrorCode {
  if (PASSTHROUGH.has(errno)) return errno as ErrorCode;
  if (errno === 'EACCES' || errno === 'EROFS') return 'EPERM';
  if (errno === 'EOPNOTSUPP' || errno === 'ENOTSUP' || errno === 'ENODEV') return 'ENOTSUP';
  if (errno === 'ENFILE') return 'EMFILE';
  if (errno === 'ESRCH') return 'ENOENT';
  return 'EIO';
}

/** Wrap a Node fs error (which has .code) as a KernelError naming op and path. */
export function fromNodeError(op: string, path: string, err: unknown): KernelError {
  const e = err as NodeJS.ErrnoException;
  return new KernelError(op, path, typeof e?.code === 'string' ? e.code : 'EIO', e?.code ? undefined : String(err));
}

/** Does err carry one of these errno names? (KernelError.errno, or a Node error's .code) */
export function isErrno(err: unknown, ...codes: string[]): boolean {
  if (err instanceof KernelError) return codes.includes(err.errno);
  const c = (err as { code?: unknown })?.code;
  return typeof c === 'string' && codes.includes(c);
}

/**
 * A mistake in the agent's configuration (an option, cgroup.conf, gres.conf):
 * the agent refuses to start with exit status 2 and one line saying what is
 * wrong (file:line where there is one) and, in `hint`, how to fix it.
 */
export class ConfigError extends AgentError {
  constructor(message: string, readonly hint?: string) {
    super('EINVAL', message);
    this.name = 'ConfigError';
  }
}
