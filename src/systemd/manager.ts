/**
 * systemd/manager: a small client for org.freedesktop.systemd1 over D-Bus
 * (dbus-next, low-level messages only: no introspection round trips).
 *
 * Owns the conversation with systemd's Manager object: StartTransientUnit for
 * the node scope (waiting for its job through JobRemoved), AbandonScope,
 * GetUnit + properties, ResetFailedUnit, StopUnit. Every call is bounded by a
 * timeout (dbus-next has none) and every error names the method and the bus
 * address. It never touches the cgroup tree; src/scope/systemd.ts decides what
 * to do with the answers.
 *
 * Addresses: an explicit `unix:path=...` (or tcp:) address, else
 * $DBUS_SYSTEM_BUS_ADDRESS, else the system bus socket. Any address is spoken
 * to as a plain message bus (Hello, then calls), so a private session bus, as
 * the test sandbox runs, works the same as the system bus.
 */
import dbus from 'dbus-next';
import type { Message as DbusMessage } from 'dbus-next';
import { AgentError, type ErrorCode } from '../errors.js';

const { Message, Variant, MessageType } = dbus;

export const DEFAULT_SYSTEM_BUS = 'unix:path=/run/dbus/system_bus_socket';
const SYSTEMD = 'org.freedesktop.systemd1';
const MANAGER_PATH = '/org/freedesktop/systemd1';
const MANAGER_IFACE = 'org.freedesktop.systemd1.Manager';
const UNIT_IFACE = 'org.freedesktop.systemd1.Unit';
const PROPS_IFACE = 'org.freedesktop.DBus.Properties';
/** TasksMax=infinity on the wire: (uint64_t) -1. */
export const UINT64_MAX = 2n ** 64n - 1n;

/** systemd (or the bus it lives on) cannot be reached at `address`. */
export class SystemdUnavailableError extends AgentError {
  readonly address: string;
  constructor(address: string, detail: string, code: ErrorCode = 'EIO') {
    super(code, `systemd is unavailable on D-Bus at ${address}: ${detail}`);
    this.name = 'SystemdUnavailableError';
    this.address = address;
  }
}

/** systemd answered a call with a D-Bus error; `dbusName` is the error name. */
export class SystemdCallError extends AgentError {
  readonly dbusName: string;
  readonly method: string;
  constructor(code: ErrorCode, method: string, address: string, dbusName: string, text: string) {
    super(code, `systemd ${method} on ${address} failed: ${dbusName}: ${text}`);
    this.name = 'SystemdCallError';
    this.dbusName = dbusName;
    this.method = method;
  }
}

/** A unit's start or stop job finished with a result other than "done". */
export class SystemdJobError extends AgentError {
  readonly result: string;
  readonly unit: string;
  constructor(unit: string, what: string, result: string, address: string) {
    super('EIO', `systemd ${what} job for ${unit} on ${address} finished with result "${result}"`);
    this.name = 'SystemdJobError';
    this.result = result;
    this.unit = unit;
  }
}

export const DBUS_UNIT_EXISTS = 'org.freedesktop.systemd1.UnitExists';
export const DBUS_NO_SUCH_UNIT = 'org.freedesktop.systemd1.NoSuchUnit';

export interface UnitState {
  loadState: string;
  activeState: string;
  subState: string;
  /** The unit's cgroup relative to systemd's cgroup root ('' when it has none). */
  controlGroup: string;
}

export interface TransientScopeSpec {
  name: string;
  slice: string;
  pids: number[];
  delegate: boolean;
  tasksMax: 'infinity' | number;
  /** More unit properties as [name, D-Bus signature, value] (e.g. ['MemoryMax', 't', 1n << 30n]). */
  properties?: [name: string, signature: string, value: unknown][];
}

export interface SystemdManager {
  /** The bus address in use (for messages). */
  readonly address: string;
  /** StartTransientUnit(name, "fail", [PIDs, Delegate, Slice, TasksMax], []) and wait for its job. */
  startTransientScope(spec: TransientScopeSpec): Promise<void>;
  abandonScope(name: string): Promise<void>;
  /** null when systemd has no such unit loaded. */
  getUnitState(name: string): Promise<UnitState | null>;
  /** ResetFailedUnit; a unit that is not loaded has nothing to reset (no error). */
  resetFailedUnit(name: string): Promise<void>;
  /** StopUnit(name, "replace") and wait for the job; a unit that is not loaded is already stopped. */
  stopUnit(name: string, opts?: { timeoutMs?: number }): Promise<void>;
  /** Manager.SystemState: initializing, starting, running, degraded, stopping... */
  systemState(): Promise<string>;
  close(): Promise<void>;
}

export interface ConnectOptions {
  address?: string;
  timeoutMs: number;
}

/** The address connectSystemd uses for these options. */
export function resolveBusAddress(address?: string): string {
  return address || process.env.DBUS_SYSTEM_BUS_ADDRESS || DEFAULT_SYSTEM_BUS;
}

function codeForSocketError(err: NodeJS.ErrnoException): ErrorCode {
  switch (err.code) {
    case 'ENOENT':
      return 'ENOENT';
    case 'EACCES':
    case 'EPERM':
      return 'EPERM';
    case 'ETIMEDOUT':
      return 'ETIMEDOUT';
    default:
      return 'EIO';
  }
}

function codeForDbusError(name: string): ErrorCode {
  switch (name) {
    case DBUS_UNIT_EXISTS:
      return 'EEXIST';
    case DBUS_NO_SUCH_UNIT:
    case 'org.freedesktop.DBus.Error.UnknownObject':
      return 'ENOENT';
    case 'org.freedesktop.DBus.Error.AccessDenied':
    case 'org.freedesktop.DBus.Error.InteractiveAuthorizationRequired':
      return 'EPERM';
    case 'org.freedesktop.DBus.Error.InvalidArgs':
      return 'EINVAL';
    case 'org.freedesktop.DBus.Error.NoReply':
    case 'org.freedesktop.DBus.Error.Timeout':
      return 'ETIMEDOUT';
    default:
      return 'EIO';
  }
}

/** Errors that mean "nobody owns org.freedesktop.systemd1 on this bus" (Spawn.* too: a bus that tried to activate it and failed). */
const NOT_ON_BUS = new Set([
  'org.freedesktop.DBus.Error.ServiceUnknown',
  'org.freedesktop.DBus.Error.NameHasNoOwner',
  'org.freedesktop.DBus.Error.Spawn.ServiceNotFound',
]);

/**
 * Connect to the bus and say Hello, bounded by timeoutMs. Rejects with
 * SystemdUnavailableError (naming the address) when the bus cannot be reached,
 * refuses us, or does not answer in time.
 */
export async function connectSystemd(o: ConnectOptions): Promise<SystemdManager> {
  const address = resolveBusAddress(o.address);
  if (/^unix:abstract=/.test(address)) {
    // dbus-next needs the optional usocket module for abstract sockets; we do not ship it.
    throw new SystemdUnavailableError(address, 'abstract socket addresses are not supported; use unix:path=...', 'ENOTSUP');
  }
  let bus: dbus.MessageBus;
  try {
    bus = dbus.sessionBus({ busAddress: address });
  } catch (err) {
    throw new SystemdUnavailableError(address, `bad bus address: ${(err as Error).message}`, 'EINVAL');
  }
  const m = new DbusSystemdManager(bus, address, o.timeoutMs);
  await m.connected();
  return m;
}

type Pending = { reject: (err: Error) => void };

class DbusSystemdManager implements SystemdManager {
  readonly address: string;
  private readonly bus: dbus.MessageBus;
  private readonly timeoutMs: number;
  private closed = false;
  private lost: Error | null = null;
  private readonly pending = new Set<Pending>();
  /** JobRemoved results that arrived before anyone waited for them (bounded). */
  private readonly finishedJobs = new Map<string, string>();
  private readonly jobWaiters = new Map<string, (result: string) => void>();
  private readonly ready: Promise<void>;

  constructor(bus: dbus.MessageBus, address: string, timeoutMs: number) {
    this.bus = bus;
    this.address = address;
    this.timeoutMs = timeoutMs;
    // Without an 'error' listener, EventEmitter would throw a socket error out of the process.
    this.ready = new Promise<void>((resolve, reject) => {
      let settled = false;
      const timer = setTimeout(() => {
        if (settled) return;
        settled = true;
        this.destroy();
        reject(new SystemdUnavailableError(address, `no answer to the D-Bus handshake within ${timeoutMs} ms`, 'ETIMEDOUT'));
      }, timeoutMs);
      bus.on('connect', () => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        resolve();
      });
      bus.on('error', (err: NodeJS.ErrnoException) => {
        const e = new SystemdUnavailableError(address, err?.message ?? String(err), codeForSocketError(err ?? {}));
        this.connectionLost(e);
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.destroy();
        reject(e);
      });
    });
    const conn = (bus as unknown as { _connection: NodeJS.EventEmitter })._connection;
    conn.on('end', () => this.connectionLost(new SystemdUnavailableError(address, 'the bus closed the connection', 'EIO')));
    bus.on('message', (msg: DbusMessage) => this.onMessage(msg));
  }

  async connected(): Promise<void> {
    await this.ready;
    // Match JobRemoved before any job exists, so no completion can slip past.
    await this.call('org.freedesktop.DBus', '/org/freedesktop/DBus', 'org.freedesktop.DBus', 'AddMatch', 's', [
      `type='signal',sender='${SYSTEMD}',path='${MANAGER_PATH}',interface='${MANAGER_IFACE}',member='JobRemoved'`,
    ]).catch((err) => {
      this.destroy();
      throw err;
    });
  }

  private onMessage(msg: DbusMessage): void {
    if (msg.type !== MessageType.SIGNAL || msg.member !== 'JobRemoved' || msg.interface !== MANAGER_IFACE) return;
    // JobRemoved(u id, o job, s unit, s result)
    const [, job, , result] = msg.body as [number, string, string, string];
    const waiter = this.jobWaiters.get(job);
    if (waiter) {
      this.jobWaiters.delete(job);
      waiter(result);
      return;
    }
    this.finishedJobs.set(job, result);
    if (this.finishedJobs.size > 256) this.finishedJobs.delete(this.finishedJobs.keys().next().value as string);
  }

  private connectionLost(err: Error): void {
    if (this.lost || this.closed) return;
    this.lost = err;
    for (const p of this.pending) p.reject(err);
    this.pending.clear();
  }

  private destroy(): void {
    try {
      this.bus.disconnect();
    } catch {
      /* already closed */
    }
    const stream = (this.bus as unknown as { _connection?: { stream?: { destroy?: () => void } } })._connection?.stream;
    stream?.destroy?.();
  }

  /** One method call with a timeout; D-Bus errors become SystemdCallError/SystemdUnavailableError. */
  private call(destination: string, path: string, iface: string, member: string, signature: string, body: unknown[], timeoutMs = this.timeoutMs): Promise<unknown[]> {
    const subject = iface === MANAGER_IFACE && typeof body[0] === 'string' ? `(${body[0]})` : iface === PROPS_IFACE ? ` on ${path}` : '';
    const method = `${iface === MANAGER_IFACE ? 'Manager' : iface}.${member}${subject}`;
    if (this.closed) return Promise.reject(new AgentError('EIO', `systemd ${method}: the connection to ${this.address} is closed`));
    if (this.lost) return Promise.reject(this.lost);
    const msg = new Message({ destination, path, interface: iface, member, signature, body });
    const serial = this.bus.newSerial();
    msg.serial = serial;
    return new Promise<unknown[]>((resolve, reject) => {
      const p: Pending = { reject };
      this.pending.add(p);
      const timer = setTimeout(() => {
        this.pending.delete(p);
        // dbus-next keeps a handler per serial forever; drop ours.
        delete (this.bus as unknown as { _methodReturnHandlers: Record<number, unknown> })._methodReturnHandlers[serial];
        reject(new AgentError('ETIMEDOUT', `systemd ${method} on ${this.address}: no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      this.bus.call(msg).then(
        (reply) => {
          clearTimeout(timer);
          this.pending.delete(p);
          resolve(reply?.body ?? []);
        },
        (err: unknown) => {
          clearTimeout(timer);
          this.pending.delete(p);
          const e = err as { type?: string; text?: string; message?: string };
          if (typeof e?.type === 'string') {
            if (NOT_ON_BUS.has(e.type) || e.type.startsWith('org.freedesktop.DBus.Error.Spawn.')) {
              reject(new SystemdUnavailableError(this.address, `${method}: ${e.type}: ${e.text ?? ''} (is systemd running on this bus?)`, 'EIO'));
            } else {
              reject(new SystemdCallError(codeForDbusError(e.type), method, this.address, e.type, e.text ?? ''));
            }
          } else {
            reject(new AgentError('EIO', `systemd ${method} on ${this.address}: ${e?.message ?? String(err)}`));
          }
        },
      );
    });
  }

  private manager(member: string, signature: string, body: unknown[], timeoutMs?: number): Promise<unknown[]> {
    return this.call(SYSTEMD, MANAGER_PATH, MANAGER_IFACE, member, signature, body, timeoutMs);
  }

  /** Resolve with the result of JobRemoved for `job`, bounded by timeoutMs. */
  private waitJob(job: string, timeoutMs: number, what: string, unit: string): Promise<string> {
    const early = this.finishedJobs.get(job);
    if (early !== undefined) {
      this.finishedJobs.delete(job);
      return Promise.resolve(early);
    }
    return new Promise<string>((resolve, reject) => {
      const p: Pending = {
        reject: (err) => {
          clearTimeout(timer);
          this.jobWaiters.delete(job);
          reject(err);
        },
      };
      this.pending.add(p);
      const timer = setTimeout(() => {
        this.pending.delete(p);
        this.jobWaiters.delete(job);
        reject(new AgentError('ETIMEDOUT', `systemd ${what} job ${job} for ${unit} on ${this.address}: no JobRemoved within ${timeoutMs} ms`));
      }, timeoutMs);
      this.jobWaiters.set(job, (result) => {
        clearTimeout(timer);
        this.pending.delete(p);
        resolve(result);
      });
    });
  }

  async startTransientScope(spec: TransientScopeSpec): Promise<void> {
    if (!spec.name.endsWith('.scope')) throw new AgentError('EINVAL', `startTransientScope: ${spec.name} is not a .scope name`);
    if (spec.pids.length === 0) throw new AgentError('EINVAL', `startTransientScope ${spec.name}: a scope needs at least one pid`);
    const tasksMax = spec.tasksMax === 'infinity' ? UINT64_MAX : BigInt(spec.tasksMax);
    const props = [
      ['PIDs', new Variant('au', spec.pids)],
      ['Delegate', new Variant('b', spec.delegate)],
      ['Slice', new Variant('s', spec.slice)],
      ['TasksMax', new Variant('t', tasksMax)],
      ...(spec.properties ?? []).map(([name, sig, value]) => [name, new Variant(sig, value)]),
    ];
    const [job] = (await this.manager('StartTransientUnit', 'ssa(sv)a(sa(sv))', [spec.name, 'fail', props, []])) as [string];
    const result = await this.waitJob(job, this.timeoutMs, 'start', spec.name);
    if (result !== 'done') throw new SystemdJobError(spec.name, 'start', result, this.address);
  }

  async abandonScope(name: string): Promise<void> {
    await this.manager('AbandonScope', 's', [name]);
  }

  async getUnitState(name: string): Promise<UnitState | null> {
    let unitPath: string;
    try {
      [unitPath] = (await this.manager('GetUnit', 's', [name])) as [string];
    } catch (err) {
      if (err instanceof SystemdCallError && err.dbusName === DBUS_NO_SUCH_UNIT) return null;
      throw err;
    }
    try {
      const [all] = (await this.call(SYSTEMD, unitPath, PROPS_IFACE, 'GetAll', 's', [UNIT_IFACE])) as [Record<string, { value: unknown }>];
      const typeIface = unitTypeInterface(name);
      let controlGroup = '';
      if (typeIface) {
        const [cg] = (await this.call(SYSTEMD, unitPath, PROPS_IFACE, 'Get', 'ss', [typeIface, 'ControlGroup'])) as [{ value: unknown }];
        controlGroup = String(cg?.value ?? '');
      }
      return {
        loadState: String(all.LoadState?.value ?? ''),
        activeState: String(all.ActiveState?.value ?? ''),
        subState: String(all.SubState?.value ?? ''),
        controlGroup,
      };
    } catch (err) {
      // Collected between GetUnit and the property reads.
      if (err instanceof SystemdCallError && (err.dbusName === 'org.freedesktop.DBus.Error.UnknownObject' || err.dbusName === 'org.freedesktop.DBus.Error.UnknownMethod')) return null;
      throw err;
    }
  }

  async resetFailedUnit(name: string): Promise<void> {
    try {
      await this.manager('ResetFailedUnit', 's', [name]);
    } catch (err) {
      if (err instanceof SystemdCallError && err.dbusName === DBUS_NO_SUCH_UNIT) return;
      throw err;
    }
  }

  async stopUnit(name: string, opts?: { timeoutMs?: number }): Promise<void> {
    const timeoutMs = opts?.timeoutMs ?? this.timeoutMs;
    let job: string;
    try {
      [job] = (await this.manager('StopUnit', 'ss', [name, 'replace'], timeoutMs)) as [string];
    } catch (err) {
      if (err instanceof SystemdCallError && err.dbusName === DBUS_NO_SUCH_UNIT) return;
      throw err;
    }
    const result = await this.waitJob(job, timeoutMs, 'stop', name);
    if (result !== 'done') throw new SystemdJobError(name, 'stop', result, this.address);
  }

  async systemState(): Promise<string> {
    const [v] = (await this.call(SYSTEMD, MANAGER_PATH, PROPS_IFACE, 'Get', 'ss', [MANAGER_IFACE, 'SystemState'])) as [{ value: unknown }];
    return String(v?.value ?? '');
  }

  async close(): Promise<void> {
    if (this.closed) return;
    const err = new AgentError('EIO', `systemd client for ${this.address} was closed`);
    for (const p of this.pending) p.reject(err);
    this.pending.clear();
    this.closed = true;
    this.destroy();
  }
}

/** The D-Bus interface that carries ControlGroup for a unit of this type. */
function unitTypeInterface(name: string): string | null {
  const suffix = name.slice(name.lastIndexOf('.') + 1);
  const iface = ({ scope: 'Scope', service: 'Service', slice: 'Slice', socket: 'Socket', mount: 'Mount', swap: 'Swap' } as Record<string, string>)[suffix];
  return iface ? `org.freedesktop.systemd1.${iface}` : null;
}
