// What this kernel's userfaultfd can do for each memory type, asked of the kernel itself:
// UFFDIO_API for the features, and for every memory type a real region registered with a
// fresh userfaultfd per attempt, recording what UFFDIO_REGISTER answers and which ioctls it
// advertises. The declarations (types.ts) and check.ts only explain the answers.
import type { FeatureName } from '../kernel/constants.js';
import * as C from '../kernel/constants.js';
import { UffdError } from '../kernel/errors.js';
import { hugetlbPages, kernelRelease } from '../kernel/memory.js';
import { RegisterMode, Userfaultfd, featureMask, featureNames, ioctlNames } from '../kernel/userfaultfd.js';
import { FEATURE_SINCE, checkRegister, featuresFor } from './check.js';
import { memoryTypes } from './index.js';
import type { MemoryType, Region, ResolveOp } from './types.js';

export interface RegistrationProbe {
  modes: RegisterMode[];
  /** Every mode is one the type declares. */
  declared: boolean;
  /** Features the fresh userfaultfd was created with for this attempt. */
  features: FeatureName[];
  /** The kernel accepted UFFDIO_REGISTER. */
  registered: boolean;
  /** The kernel's errno name when it refused. */
  errno?: string;
  /** Ioctls the kernel advertised for the range (names and mask), when registered. */
  ioctls?: string[];
  ioctlMask?: string;
  /** Operations the type declares for these modes that the kernel did not advertise. */
  missingOps?: ResolveOp[];
  /** Usable by the engine: declared, accepted by the kernel and passing check.ts. */
  usable: boolean;
  /** What stops it (check.ts's refusal or the kernel's, explained). */
  blocker?: string;
}

export interface RegionProbe {
  pageSize: number;
  /** Whether a region of this page size can be created and served here. */
  available: boolean;
  reason?: string;
  /** A region was mapped for the registration attempts (hugetlbfs: MAP_NORESERVE, no pages needed). */
  mapped: boolean;
  noReserve: boolean;
  error?: string;
  registrations: RegistrationProbe[];
}

export interface TypeProbe {
  name: string;
  description: string;
  modes: RegisterMode[];
  ops: ResolveOp[];
  pageSizes: number[];
  modeFeatures: Partial<Record<RegisterMode, FeatureName[]>>;
  regions: RegionProbe[];
}

export interface ProbeReport {
  kernel: string;
  arch: string;
  userfaultfd: {
    ok: boolean;
    error?: string;
    features?: { mask: string; names: FeatureName[] };
    /** Features this code knows that the kernel does not offer, with the release that has them. */
    notOffered?: { name: FeatureName; since: string }[];
    ioctls?: { mask: string; names: string[] };
  };
  hugetlb: Record<string, { total: number; free: number }>;
  types: TypeProbe[];
  elapsedMs: number;
}

const ALL_MODES: RegisterMode[] = ['missing', 'wp', 'minor', 'rwp'];
const OP_MODE: Partial<Record<ResolveOp, RegisterMode>> = { continue: 'minor', writeprotect: 'wp', rwprotect: 'rwp' };
const IOCTL_OF: Record<ResolveOp, string> = {
  copy: 'copy', zeropage: 'zeropage', continue: 'continue', writeprotect: 'writeprotect',
  poison: 'poison', move: 'move', rwprotect: 'rwprotect',
};

const hex = (v: bigint) => '0x' + v.toString(16);

/** The mode sets to try on a type: each single mode, then every declared mode that can be combined. */
export function modeSets(type: MemoryType): RegisterMode[][] {
  const sets: RegisterMode[][] = ALL_MODES.map((m) => [m]);
  let combo = [...type.modes];
  if (combo.includes('wp') && combo.includes('rwp')) combo = combo.filter((m) => m !== 'rwp');
  if (combo.length > 1) sets.push(combo);
  return sets;
}

// Features to ask for on an attempt: the type's own needs for the modes it declares; for a
// mode it does not declare, what any type needs for that mode (so the kernel is asked fairly).
function wantedFeatures(type: MemoryType, modes: RegisterMode[]): FeatureName[] {
  const out = new Set<FeatureName>(featuresFor(type, modes.filter((m) => type.modes.includes(m))));
  for (const m of modes) {
    if (type.modes.includes(m)) continue;
    for (const t of memoryTypes()) for (const f of t.modeFeatures[m] ?? []) out.add(f);
  }
  return [...out];
}

function probeRegistration(type: MemoryType, region: Region, modes: RegisterMode[], offered: bigint): RegistrationProbe {
  const declared = modes.every((m) => type.modes.includes(m));
  const wanted = wantedFeatures(type, modes);
  const features = featureNames(featureMask(wanted) & offered);
  const out: RegistrationProbe = { modes, declared, features, registered: false, usable: false };
  let check: string | undefined;
  try {
    checkRegister(type, modes, featureMask(features));
  } catch (e) {
    check = e instanceof Error ? e.message : String(e);
  }
  let uffd: Userfaultfd | undefined;
  try {
    uffd = Userfaultfd.create({ features, nonBlocking: true });
    let mode = 0;
    for (const m of modes) mode |= { missing: 1, wp: 2, minor: 4, rwp: 8 }[m];
    // Raw mode bits, so that even combinations Userfaultfd.register refuses reach the kernel.
    const advertised = uffd.register(region.addr, region.pageSize, mode, region.pageSize);
    out.registered = true;
    const ioctls: string[] = ioctlNames(advertised);
    out.ioctls = ioctls;
    out.ioctlMask = hex(advertised);
    if (declared) {
      const missing = type.ops.filter((op) => {
        const needs = OP_MODE[op];
        if (needs && !modes.includes(needs)) return false;
        return !ioctls.includes(IOCTL_OF[op]);
      });
      if (missing.length) out.missingOps = missing;
    }
  } catch (e) {
    if (e instanceof UffdError) {
      out.errno = e.code;
      if (!check) {
        out.blocker = e.code === 'EINVAL' && type.registerRefusal && declared
          ? `${type.name}: this kernel refuses userfaultfd registration (EINVAL): ${type.registerRefusal}`
          : `the kernel refused UFFDIO_REGISTER: ${e.message}`;
      }
    } else {
      out.errno = undefined;
      out.blocker = e instanceof Error ? e.message : String(e);
    }
  } finally {
    uffd?.close();
  }
  if (check) out.blocker = check;
  out.usable = out.registered && !check && !out.missingOps;
  if (out.registered && out.missingOps && !out.blocker) {
    out.blocker = `the kernel does not advertise ${out.missingOps.join(', ')} for this range`;
  }
  return out;
}

function probeType(type: MemoryType, offered: bigint | undefined): TypeProbe {
  const tp: TypeProbe = {
    name: type.name, description: type.description, modes: [...type.modes], ops: [...type.ops],
    pageSizes: [...type.pageSizes],
    modeFeatures: Object.fromEntries(Object.entries(type.modeFeatures).map(([k, v]) => [k, [...(v ?? [])]])),
    regions: [],
  };
  for (const pageSize of type.pageSizes) {
    let avail: { ok: boolean; reason?: string };
    try {
      avail = type.available(pageSize);
    } catch (e) {
      avail = { ok: false, reason: e instanceof Error ? e.message : String(e) };
    }
    // A region that cannot be served here may still be mappable for registration only
    // (hugetlbfs without reserved pages: MAP_NORESERVE maps without taking any).
    const noReserve = !avail.ok;
    const rp: RegionProbe = { pageSize, available: avail.ok, reason: avail.reason, mapped: false, noReserve, registrations: [] };
    tp.regions.push(rp);
    let region: Region | undefined;
    try {
      region = type.create({ size: pageSize, pageSize, noReserve });
      rp.mapped = true;
    } catch (e) {
      rp.error = e instanceof Error ? e.message : String(e);
    }
    if (!region) continue;
    try {
      if (offered !== undefined) {
        for (const modes of modeSets(type)) rp.registrations.push(probeRegistration(type, region, modes, offered));
      }
    } finally {
      region.close();
    }
  }
  return tp;
}

/** Runs the probe. Nothing is reserved or changed on the machine. */
export function probe(): ProbeReport {
  const t0 = process.hrtime.bigint();
  const report: ProbeReport = {
    kernel: kernelRelease(), arch: process.arch, userfaultfd: { ok: false }, hugetlb: {}, types: [], elapsedMs: 0,
  };
  let offered: bigint | undefined;
  try {
    const o = Userfaultfd.offered();
    offered = o.features;
    report.userfaultfd = {
      ok: true,
      features: { mask: hex(o.features), names: featureNames(o.features) },
      notOffered: (Object.keys(C.FEATURE_BITS) as FeatureName[])
        .filter((n) => !(o.features & C.featureBit(n))).map((name) => ({ name, since: FEATURE_SINCE[name] })),
      ioctls: { mask: hex(o.ioctls), names: ioctlNames(o.ioctls) },
    };
  } catch (e) {
    report.userfaultfd = { ok: false, error: e instanceof Error ? e.message : String(e) };
  }
  for (const kib of [2048, 1048576]) report.hugetlb[`${kib}kB`] = hugetlbPages(kib);
  for (const type of memoryTypes()) report.types.push(probeType(type, offered));
  report.elapsedMs = Math.round(Number(process.hrtime.bigint() - t0) / 1e5) / 10;
  return report;
}

function size(n: number): string {
  if (n >= 2 ** 30) return `${n / 2 ** 30} GiB`;
  if (n >= 2 ** 20) return `${n / 2 ** 20} MiB`;
  return `${n / 1024} KiB`;
}

function wrap(text: string, width: number, indent: string): string {
  const words = text.split(' ');
  const lines: string[] = [];
  let line = '';
  for (const w of words) {
    if (line && line.length + 1 + w.length > width) {
      lines.push(line);
      line = w;
    } else line = line ? `${line} ${w}` : w;
  }
  if (line) lines.push(line);
  return lines.map((l) => indent + l).join('\n');
}

/** The report as a table for people. */
export function formatProbe(r: ProbeReport): string {
  const out: string[] = [];
  out.push(`kernel ${r.kernel} (${r.arch})`);
  const u = r.userfaultfd;
  if (!u.ok) {
    out.push(`userfaultfd: unavailable: ${u.error}`);
  } else {
    out.push(`userfaultfd features offered ${u.features!.mask}:`);
    out.push(wrap(u.features!.names.join(' '), 96, '  '));
    if (u.notOffered?.length) {
      out.push(`not offered: ${u.notOffered.map((f) => `${f.name} (Linux ${f.since})`).join(', ')}`);
    }
  }
  const hp = Object.entries(r.hugetlb).map(([k, v]) => `${k} ${v.free}/${v.total} free`).join(', ');
  out.push(`hugetlb pages: ${hp}`);
  out.push('');
  out.push(`${'MODES'.padEnd(22)}${'DECLARED'.padEnd(10)}${'KERNEL'.padEnd(10)}${'USABLE'.padEnd(8)}IOCTLS ADVERTISED`);
  for (const t of r.types) {
    out.push('');
    out.push(`${t.name}: ${t.description}`);
    out.push(`  declares modes ${t.modes.join(', ')}; ops ${t.ops.join(', ')}`);
    for (const rp of t.regions) {
      let head = `  ${size(rp.pageSize)} pages: `;
      head += rp.available ? 'regions can be created here' : `regions cannot be served here: ${rp.reason}`;
      out.push(head);
      if (!rp.mapped) {
        out.push(`    (no region could be mapped: ${rp.error})`);
        continue;
      }
      if (rp.noReserve) out.push('    (registration probed on a MAP_NORESERVE mapping)');
      // Blockers are numbered notes under the rows, each text once per region.
      const notes: string[] = [];
      for (const g of rp.registrations) {
        let mark = '';
        if (g.blocker && g.declared) {
          let i = notes.indexOf(g.blocker);
          if (i < 0) i = notes.push(g.blocker) - 1;
          mark = ` [${i + 1}]`;
        }
        const row = `    ${g.modes.join('+').padEnd(18)}${(g.declared ? 'yes' : 'no').padEnd(10)}` +
          `${(g.registered ? 'ok' : g.errno ?? 'error').padEnd(10)}${((g.usable ? 'yes' : 'no') + mark).padEnd(8)}` +
          `${g.ioctls ? g.ioctls.join(' ') : '-'}`;
        out.push(row);
      }
      notes.forEach((n, i) => out.push(wrap(`[${i + 1}] ${n}`, 96, '    ')));
    }
  }
  out.push('');
  out.push(`(rows with DECLARED=no are modes the type does not declare: what the kernel answers is shown for reference; ` +
    `probe took ${r.elapsedMs} ms)`);
  return out.join('\n');
}
