/**
 * devices/gres: Slurm's gres.conf, as far as device files go.
 *
 * Owns parsing (`Name=gpu Type=a100 File=/dev/nvidia[0-3]`, bracket ranges and
 * lists, `MultipleFiles=`, `NodeName=` host lists, comments, `\` line
 * continuation, case-insensitive keys), the node's inventory of gres units in
 * slurmd's order per name, and resolving an allocation entry (an absolute path
 * or "<name>:<index>", 0-based in that order, as Slurm numbers SLURM_STEP_GPUS)
 * to the unit's files: the lines that start with Name= first, then those that
 * start with NodeName=, each kind in file order. Devices are stat'ed by
 * policy.ts, not here: this module reads the config file and nothing else.
 * Lines slurmd stops on are errors here too (a Count= that does not match
 * File=, a MultipleFiles= of one file, a gres line that does not start with
 * Name= or NodeName=), so a file Slurm refuses is not run.
 * AutoDetect= is not supported (devices found by NVML and friends are unknown
 * to cgstep): it is ignored with a warning, list File= explicitly.
 */
import fs from 'node:fs';
import type { Logger } from 'pino';
import { AgentError, fromNodeError } from '../errors.js';

export interface GresUnit {
  name: string;
  type?: string;
  /** 0-based among units of this name, in slurmd's order (Name= lines, then NodeName= lines). */
  index: number;
  /** The unit's device files: one for File=, several for MultipleFiles=. */
  files: string[];
  /** "<source>:<line>" where it was defined. */
  origin: string;
}

/** Limits that keep a hostile file from expanding without bound. */
const MAX_EXPANSION = 65536;

function einval(message: string): AgentError {
  return new AgentError('EINVAL', message);
}

/** Split on commas that are not inside brackets. */
function splitTop(s: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let cur = '';
  for (const ch of s) {
    if (ch === '[') depth++;
    if (ch === ']') depth--;
    if (ch === ',' && depth === 0) {
      out.push(cur);
      cur = '';
    } else cur += ch;
  }
  out.push(cur);
  return out;
}

/** "0-3,5,07-09" -> ["0","1","2","3","5","07","08","09"] (width of the lower bound kept). */
function expandRanges(body: string, where: string): string[] {
  const out: string[] = [];
  for (const part of body.split(',')) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part);
    if (!m) throw einval(`${where}: bad range ${JSON.stringify(part)} in [${body}]`);
    const lo = Number(m[1]);
    const hi = m[2] === undefined ? lo : Number(m[2]);
    if (hi < lo) throw einval(`${where}: range ${part} runs backwards`);
    if (hi - lo + out.length >= MAX_EXPANSION) throw einval(`${where}: [${body}] expands to more than ${MAX_EXPANSION} names`);
    const width = m[1].length > 1 && m[1].startsWith('0') ? m[1].length : 0;
    for (let n = lo; n <= hi; n++) out.push(String(n).padStart(width, '0'));
  }
  return out;
}

/**
 * Expand a Slurm list with bracket ranges: "/dev/nvidia[0-1],/dev/foo" or
 * "node[01-03],rack[1-2]-n[1-2]" (several brackets multiply out, in order).
 */
export function expandList(expr: string, where = 'list'): string[] {
  const out: string[] = [];
  for (const item of splitTop(expr.trim())) {
    if (item.length === 0) throw einval(`${where}: empty item in ${JSON.stringify(expr)}`);
    let acc = [''];
    const re = /\[([^\]]*)\]|([^[\]]+)/g;
    let consumed = 0;
    for (let m = re.exec(item); m; m = re.exec(item)) {
      if (m.index !== consumed) break;
      consumed = re.lastIndex;
      const parts = m[1] !== undefined ? expandRanges(m[1], where) : [m[2]];
      if (acc.length * parts.length + out.length > MAX_EXPANSION) throw einval(`${where}: ${JSON.stringify(expr)} expands to more than ${MAX_EXPANSION} names`);
      acc = acc.flatMap((a) => parts.map((p) => a + p));
    }
    if (consumed !== item.length) throw einval(`${where}: unbalanced brackets in ${JSON.stringify(item)}`);
    out.push(...acc);
  }
  return out;
}

/** Logical lines: comments stripped, `\` continuations joined; with their first line number. */
function logicalLines(text: string): { line: number; text: string }[] {
  const out: { line: number; text: string }[] = [];
  const raw = text.split('\n');
  let pending: { line: number; text: string } | null = null;
  raw.forEach((l, i) => {
    let s = '';
    for (let k = 0; k < l.length; k++) {
      if (l[k] === '\\' && l[k + 1] === '#') {
        s += '#';
        k++;
      } else if (l[k] === '#') break;
      else s += l[k];
    }
    s = s.replace(/\r$/, '');
    const cont = /\\\s*$/.test(s);
    if (cont) s = s.replace(/\\\s*$/, ' ');
    if (pending) pending.text += ' ' + s;
    else pending = { line: i + 1, text: s };
    if (!cont) {
      if (pending.text.trim()) out.push(pending);
      pending = null;
    }
  });
  if (pending !== null && (pending as { text: string }).text.trim()) out.push(pending);
  return out;
}

/** "Key=Value Key2="quoted value"" -> [[key lowercased, value], ...] */
function pairs(s: string, where: string): [string, string][] {
  const out: [string, string][] = [];
  const re = /\s*([A-Za-z][A-Za-z0-9_]*)=("([^"]*)"|\S*)/y;
  let pos = 0;
  const t = s.trim();
  while (pos < t.length) {
    re.lastIndex = pos;
    const m = re.exec(t);
    if (!m) throw einval(`${where}: expected Key=Value at ${JSON.stringify(t.slice(pos, pos + 40))}`);
    out.push([m[1].toLowerCase(), m[3] ?? m[2]]);
    pos = re.lastIndex;
    while (pos < t.length && /\s/.test(t[pos])) pos++;
  }
  return out;
}

/** Gres whose Count= is shares of the files (Slurm's shared gres), not one unit per file. */
const SHARED = new Set(['mps', 'shard']);

/**
 * Count= as slurmd reads it (digits, then an optional k/m/g/t/p multiplier of
 * 1024s). With device files it must equal the units they make (one per File=
 * path, one per MultipleFiles= line), except for shared gres: slurmd stops on
 * a mismatch, so a line whose Count and File disagree is an error here too.
 */
function checkCount(count: string | undefined, name: string, units: number, where: string): void {
  if (count === undefined) return;
  const m = /^(\d+)([kmgtp]?)$/i.exec(count);
  if (!m) throw einval(`${where}: invalid Count=${count} (a number, optionally with k, m, g, t or p)`);
  const n = BigInt(m[1]) * 1024n ** BigInt(' kmgtp'.indexOf(m[2].toLowerCase() || ' '));
  if (units > 0 && n !== BigInt(units) && !SHARED.has(name.toLowerCase())) {
    throw einval(`${where}: Count=${count} does not match File value (${units} device unit(s)); drop Count= or make it ${units}`);
  }
}

/** gres.conf's keys, lowercased -> as Slurm spells them. */
const SPELLED: Record<string, string> = {
  name: 'Name', type: 'Type', file: 'File', files: 'Files', multiplefiles: 'MultipleFiles', nodename: 'NodeName',
  count: 'Count', cores: 'Cores', cpus: 'CPUs', links: 'Links', flags: 'Flags', autodetect: 'AutoDetect',
};
const KNOWN = new Set(Object.keys(SPELLED));

export class GresInventory {
  private readonly byName = new Map<string, GresUnit[]>();

  constructor(
    readonly node: string,
    units: GresUnit[],
    /** What the parser skipped or could not honour, in words (also logged). */
    readonly warnings: string[] = [],
    /**
     * Why this node has no gres device although gres.conf has gres lines (all
     * for other nodes, or none with File=), in words (also logged); empty otherwise.
     */
    readonly unconfined: string[] = [],
  ) {
    for (const u of units) {
      const list = this.byName.get(u.name) ?? [];
      list.push(u);
      this.byName.set(u.name, list);
    }
  }

  /** Gres names with device files on this node. */
  names(): string[] {
    return [...this.byName.keys()];
  }

  /** This name's units, in slurmd's order. */
  units(name: string): readonly GresUnit[] {
    return this.byName.get(name) ?? [];
  }

  all(): GresUnit[] {
    return [...this.byName.values()].flat();
  }

  /** The unit one of whose files is this path, if any. */
  unitOfPath(path: string): GresUnit | undefined {
    return this.all().find((u) => u.files.includes(path));
  }

  /**
   * An allocation entry -> the gres unit it names. "<name>:<index>" is the
   * index-th unit of that name (0-based); an absolute path must be one of the
   * node's gres files. EINVAL otherwise, naming the entry.
   */
  resolve(entry: string): GresUnit {
    if (entry.startsWith('/')) {
      const u = this.unitOfPath(entry);
      if (!u) throw einval(`gres ${JSON.stringify(entry)} is not a File= of any gres on node ${this.node}`);
      return u;
    }
    const m = /^([A-Za-z0-9_.+-]+):(0|[1-9][0-9]{0,8})$/.exec(entry);
    if (!m) throw einval(`gres ${JSON.stringify(entry)}: expected an absolute device path or <name>:<index>`);
    const list = this.byName.get(m[1]);
    if (!list) throw einval(`gres ${JSON.stringify(entry)}: node ${this.node} has no gres named ${m[1]} with device files (has: ${this.names().join(', ') || 'none'})`);
    const idx = Number(m[2]);
    if (idx >= list.length) throw einval(`gres ${JSON.stringify(entry)}: ${m[1]} has ${list.length} device(s) on node ${this.node}, indices 0-${list.length - 1}`);
    return list[idx];
  }
}

export interface GresParseOptions {
  /** This node's name (Slurm's NodeName): lines for other nodes are skipped. */
  nodeName: string;
  /** Shown in errors and warnings ("gres.conf" by default). */
  source?: string;
  log?: Logger;
}

/** Parse gres.conf text into this node's inventory. EINVAL naming source:line on bad syntax. */
export function parseGresConf(text: string, opts: GresParseOptions): GresInventory {
  const source = opts.source ?? 'gres.conf';
  const warnings: string[] = [];
  const warn = (msg: string) => {
    warnings.push(msg);
    opts.log?.warn({ source }, msg);
  };
  // slurmd loads every line that starts with Name= before every line that starts with NodeName=
  // (two arrays of its parser), and numbers the units in that order.
  const lines: DeviceLine[] = [];
  // What the node gets no devices from: device lines for other nodes, lines without File=.
  const elsewhere = new Set<string>();
  const fileless = new Set<string>();
  for (const { line, text: l } of logicalLines(text)) {
    const where = `${source}:${line}`;
    const kv = pairs(l, where);
    const get = (k: string): string | undefined => {
      const hits = kv.filter(([key]) => key === k);
      if (hits.length > 1) throw einval(`${where}: ${k} given ${hits.length} times`);
      return hits[0]?.[1];
    };
    // As Slurm's own parser: an unknown key (a typo such as Flie=) is an error, not a warning.
    for (const [k] of kv) if (!KNOWN.has(k)) throw einval(`${where}: unknown key ${k} (known: Name, Type, File, MultipleFiles, NodeName, Count, Cores, CPUs, Links, Flags, AutoDetect)`);
    // slurmd reads a line by its first key: a gres line that starts with another (a NodeName= after
    // Name=, which would otherwise be read here as a node filter) is a parse error there.
    if (kv.some(([k]) => k === 'name') && kv[0][0] !== 'name' && kv[0][0] !== 'nodename') {
      throw einval(`${where}: a gres line must start with Name= or NodeName=, not ${SPELLED[kv[0][0]]}= (slurmd stops on it); put NodeName= (or Name=) first`);
    }
    if (kv.slice(1).some(([k]) => k === 'nodename')) throw einval(`${where}: NodeName= must come first on its line (slurmd stops on one after another key); put NodeName= first`);
    const nodes = get('nodename');
    if (nodes !== undefined && !expandList(nodes, `${where} NodeName`).includes(opts.nodeName)) {
      if (kv.some(([k]) => k === 'file' || k === 'files' || k === 'multiplefiles')) elsewhere.add(nodes);
      continue;
    }
    const auto = get('autodetect');
    if (auto !== undefined && auto.toLowerCase() !== 'off') {
      fileless.add(`AutoDetect=${auto}`);
      warn(`${where}: AutoDetect=${auto} ignored: cgstep only knows devices listed with File= or MultipleFiles=`);
    }
    const name = get('name');
    const file = get('file') ?? get('files');
    const multiple = get('multiplefiles');
    if (name === undefined) {
      if (file !== undefined || multiple !== undefined) throw einval(`${where}: File= without Name=`);
      continue; // a line of defaults (AutoDetect=, NodeName= alone)
    }
    if (!/^[A-Za-z0-9_.+-]+$/.test(name)) throw einval(`${where}: bad gres name ${JSON.stringify(name)}`);
    if (file !== undefined && multiple !== undefined) throw einval(`${where}: File= and MultipleFiles= on one line`);
    const type = get('type');
    const groups: string[][] = [];
    const mk = (files: string[]): void => {
      for (const f of files) if (!f.startsWith('/')) throw einval(`${where}: device file ${JSON.stringify(f)} is not an absolute path`);
      groups.push(files);
    };
    const files = file !== undefined ? expandList(file, `${where} File`) : [];
    const group = multiple !== undefined ? expandList(multiple, `${where} MultipleFiles`) : [];
    // As slurmd, which stops on both: a one-file MultipleFiles= is a File= written wrong.
    if (multiple !== undefined && group.length < 2) throw einval(`${where}: MultipleFiles= names one file; use File= for a single device file`);
    checkCount(get('count'), name, file !== undefined ? files.length : multiple !== undefined ? 1 : 0, where);
    for (const f of files) mk([f]);
    if (multiple !== undefined) mk(group);
    if (groups.length) lines.push({ nodeLine: kv[0][0] === 'nodename', name, ...(type !== undefined ? { type } : {}), groups, origin: where });
    // Name= with only Count= (a gres with no device files) confines nothing.
    if (file === undefined && multiple === undefined) fileless.add(`Name=${name}`);
  }
  const units = numberUnits(lines);
  const unconfined = units.length ? [] : noDevices(source, opts.nodeName, elsewhere, fileless);
  for (const msg of unconfined) opts.log?.warn({ source, nodeName: opts.nodeName, nodeNamesSeen: [...elsewhere] }, msg);
  return new GresInventory(opts.nodeName, units, warnings, unconfined);
}

/** A gres.conf line with device files for this node: its units' files, in the line's order. */
interface DeviceLine {
  nodeLine: boolean;
  name: string;
  type?: string;
  groups: string[][];
  origin: string;
}

/**
 * The units, numbered per name as slurmd numbers them: the lines that start
 * with Name= first, then those that start with NodeName=, each in file order.
 * A File= listed twice for one name is an error, as slurmd stops on it (the
 * same file under several names, as gpu, mps and shard share, is not).
 */
function numberUnits(lines: readonly DeviceLine[]): GresUnit[] {
  const units: GresUnit[] = [];
  const counts = new Map<string, number>();
  const seen = new Map<string, string>();
  for (const l of [...lines.filter((x) => !x.nodeLine), ...lines.filter((x) => x.nodeLine)]) {
    for (const files of l.groups) {
      // One File= per unit; MultipleFiles= groups are not checked, as slurmd skips them.
      if (files.length === 1) {
        const key = `${l.name}\0${files[0]}`;
        const first = seen.get(key);
        if (first !== undefined) throw einval(`${l.origin}: ${l.name} device file ${files[0]} is listed again (first at ${first}); slurmd stops on a duplicate device file of one gres name`);
        seen.set(key, l.origin);
      }
      const index = counts.get(l.name) ?? 0;
      counts.set(l.name, index + 1);
      units.push({ name: l.name, ...(l.type !== undefined ? { type: l.type } : {}), index, files, origin: l.origin });
    }
  }
  return units;
}

/**
 * Why a gres.conf that has gres lines gives this node no device file, in
 * words an admin can act on; empty when it has none at all. Slurm cannot get
 * here (slurmd parses with its own NodeName, and slurmctld drains a node whose
 * gres.conf yields fewer devices than slurm.conf's Gres=), but cgstepd's node
 * name is an option that defaults to the short host name, and a shared
 * gres.conf is the rule, so a wrong name would otherwise confine nothing.
 */
function noDevices(source: string, node: string, elsewhere: Set<string>, fileless: Set<string>): string[] {
  const out: string[] = [];
  if (elsewhere.size) {
    out.push(`${source}: every device line (File=, MultipleFiles=) is for another node (NodeName=${[...elsewhere].join(', NodeName=')}) and none for ${node}, the node name this agent uses (--node-name; by default the short host name)`);
  }
  if (fileless.size) out.push(`${source}: no File= is known for ${node} (only ${[...fileless].join(', ')}): cgstep knows gres devices only from File= and MultipleFiles=`);
  return out;
}

/** Read and parse a gres.conf file. */
export function loadGresConf(path: string, nodeName: string, log?: Logger): GresInventory {
  let text: string;
  try {
    text = fs.readFileSync(path, 'utf8');
  } catch (err) {
    throw fromNodeError('read', path, err);
  }
  return parseGresConf(text, { nodeName, source: path, log });
}
