// The Firecracker UFFD handshake: parse and validate it before anything is registered,
// mapped or served. Pure functions (no system calls): the server feeds in the bytes and
// the number of fds that arrived, plus the size of the memory file.
//
// What Firecracker sends (one sendmsg on a Unix stream socket; see docs/restore.md):
//   payload: a JSON array, one object per guest memory region:
//     base_host_virt_addr  u64  host VA in the VMM where the region starts (copy destination)
//     size                 usize region length in bytes
//     offset               u64  where the region's bytes start in the memory (snapshot) file
//     page_size            usize page size in BYTES (v1.12+)
//     page_size_kib        usize the same value, ALSO IN BYTES despite the name (v1.7+, deprecated)
//   Before v1.7 neither page field exists: the page size is 4096.
//   Unknown extra fields are accepted (and reported).
//   ancillary data: SCM_RIGHTS with exactly one fd, the userfaultfd (mainline), or three
//   fds [uffd, guest_memfd, userfault bitmap memfd] on the experimental secret-hiding branch.
import { HUGE_PAGE_1G, HUGE_PAGE_2M, PAGE_SIZE } from '../kernel/constants.js';

export const KNOWN_FIELDS = ['base_host_virt_addr', 'size', 'offset', 'page_size', 'page_size_kib'] as const;
/** Fields the secret-hiding branch adds to each region. */
export const SECRET_HIDING_FIELDS = ['gpa_start', 'is_guest_memfd'] as const;

/** Page sizes the kernel can back guest memory with: base pages, 2 MiB and 1 GiB hugetlb. */
export const KERNEL_PAGE_SIZES: readonly number[] = [PAGE_SIZE, HUGE_PAGE_2M, HUGE_PAGE_1G];

export const DEFAULT_MAX_REGIONS = 1024;
/** Largest handshake payload accepted (bytes). 1024 regions of ~130 bytes is ~130 KiB. */
export const DEFAULT_MAX_PAYLOAD = 1 << 20;
/** Highest user-space address + 1 we accept (and the most a JS number holds exactly). */
export const MAX_ADDRESS = Number.MAX_SAFE_INTEGER;

export type PageSizeSource = 'page_size' | 'page_size_kib' | 'default';
/** Which Firecracker handshake generation a region's fields look like. */
export type HandshakeVariant = 'v1.1' | 'v1.7' | 'v1.12';

export interface GuestRegion {
  /** Index in the handshake array. */
  index: number;
  /** Host VA in the VMM where the region starts. */
  baseHostVirtAddr: number;
  size: number;
  /** Byte offset of the region's contents in the memory file. */
  offset: number;
  /** Page size in bytes. */
  pageSize: number;
  pageSizeSource: PageSizeSource;
  /** Fields we do not interpret, kept as sent. */
  extra: Record<string, unknown>;
}

export type FdLayout = 'mainline' | 'secret-hiding';

export interface Handshake {
  regions: GuestRegion[];
  /** The newest field set any region used. */
  variant: HandshakeVariant;
  /** One fd: the uffd (mainline). Three: uffd, guest_memfd, userfault bitmap (secret-hiding branch). */
  fdLayout: FdLayout;
  /** Sum of the region sizes. */
  totalSize: number;
  /** Names of fields we accepted without interpreting. */
  unknownFields: string[];
  /** Things that are legal but worth logging (e.g. the regions do not cover the whole file). */
  warnings: string[];
}

export type HandshakeErrorCode =
  | 'too-large' | 'bad-json' | 'not-array' | 'no-regions' | 'too-many-regions' | 'bad-region'
  | 'bad-field' | 'page-size' | 'unaligned' | 'out-of-file' | 'overlap' | 'fds' | 'unsupported';

export class HandshakeError extends Error {
  readonly code: HandshakeErrorCode;
  /** The region the problem is in, when there is one. */
  readonly region?: number;
  constructor(code: HandshakeErrorCode, message: string, region?: number) {
    super(`invalid Firecracker handshake: ${message}`);
    this.name = 'HandshakeError';
    this.code = code;
    this.region = region;
  }
}

export interface ValidateOptions {
  /** Size of the memory file in bytes; regions must lie inside it. Omit to skip that check. */
  memFileSize?: number;
  maxRegions?: number;
  maxPayloadBytes?: number;
  /** Page sizes accepted (default: what the kernel supports: 4 KiB, 2 MiB, 1 GiB). */
  pageSizes?: readonly number[];
  /**
   * What to do with a 3-fd (secret-hiding) handshake. 'reject' (default): refuse it — that
   * branch serves guest_memfd memory through a second socket protocol and a patched
   * kernel, which we do not implement. 'accept': classify it and let the caller decide.
   */
  secretHiding?: 'reject' | 'accept';
}

const hex = (n: number): string => `0x${n.toString(16)}`;
const human = (n: number): string => {
  if (n >= HUGE_PAGE_1G && n % HUGE_PAGE_1G === 0) return `${n / HUGE_PAGE_1G} GiB`;
  if (n >= 1 << 20 && n % (1 << 20) === 0) return `${n / (1 << 20)} MiB`;
  if (n >= 1024 && n % 1024 === 0) return `${n / 1024} KiB`;
  return `${n} bytes`;
};

/**
 * Where the first complete top-level JSON value in `text` ends (the index after it), or
 * -1 when the text so far is an incomplete value. Lets a stream reader tell "more bytes
 * are coming" from "the value is complete" without a length prefix (Firecracker sends
 * none). Tracks strings, escapes and bracket depth only; JSON.parse does the real check.
 */
export function jsonValueEnd(text: string): number {
  let depth = 0;
  let inString = false;
  let started = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text.charCodeAt(i);
    if (inString) {
      if (ch === 0x5c /* \ */) i++;
      else if (ch === 0x22 /* " */) inString = false;
      continue;
    }
    if (!started) {
      if (ch === 0x20 || ch === 0x0a || ch === 0x0d || ch === 0x09) continue;
      started = true;
      // A top-level scalar (not an array) is complete as far as framing is concerned:
      // JSON.parse will reject it as "not an array".
      if (ch !== 0x5b /* [ */ && ch !== 0x7b /* { */) return text.length;
    }
    if (ch === 0x22) inString = true;
    else if (ch === 0x5b || ch === 0x7b) depth++;
    else if (ch === 0x5d || ch === 0x7d) {
      depth--;
      if (depth <= 0) return i + 1;
    }
  }
  return -1;
}

function field(obj: Record<string, unknown>, name: string, index: number, required: true): number;
function field(obj: Record<string, unknown>, name: string, index: number, required: boolean): number | undefined;
function field(obj: Record<string, unknown>, name: string, index: number, required: boolean): number | undefined {
  if (!Object.prototype.hasOwnProperty.call(obj, name)) {
    if (required) throw new HandshakeError('bad-field', `region ${index} has no "${name}" field`, index);
    return undefined;
  }
  const v = obj[name];
  if (typeof v !== 'number') {
    throw new HandshakeError('bad-field', `region ${index}: "${name}" must be a number, got ${v === null ? 'null' : typeof v} ${JSON.stringify(v)}`, index);
  }
  if (!Number.isInteger(v)) {
    throw new HandshakeError('bad-field', `region ${index}: "${name}" must be an integer, got ${v}`, index);
  }
  if (v < 0) throw new HandshakeError('bad-field', `region ${index}: "${name}" must not be negative, got ${v}`, index);
  if (!Number.isSafeInteger(v)) {
    throw new HandshakeError('bad-field', `region ${index}: "${name}" = ${v} is beyond 2^53 (no user-space address or size is that large)`, index);
  }
  return v;
}

/**
 * Parses the JSON payload into regions and checks each region on its own (fields,
 * page size, alignment). Does not look at fds or the memory file.
 */
export function parseRegions(payload: string | Uint8Array, opts: ValidateOptions = {}): {
  regions: GuestRegion[]; variant: HandshakeVariant; unknownFields: string[]; secretHidingFields: boolean;
} {
  const maxPayload = opts.maxPayloadBytes ?? DEFAULT_MAX_PAYLOAD;
  const length = typeof payload === 'string' ? Buffer.byteLength(payload) : payload.length;
  if (length > maxPayload) {
    throw new HandshakeError('too-large', `payload is ${length} bytes; at most ${maxPayload} accepted`);
  }
  const text = typeof payload === 'string' ? payload : Buffer.from(payload.buffer, payload.byteOffset, payload.length).toString('utf8');
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    const shown = text.length > 80 ? `${text.slice(0, 80)}...` : text;
    throw new HandshakeError('bad-json', `payload is not valid JSON (${(e as Error).message}): ${JSON.stringify(shown)}`);
  }
  if (!Array.isArray(doc)) {
    const kind = doc === null ? 'null' : typeof doc === 'object' ? 'an object' : typeof doc;
    throw new HandshakeError('not-array', `payload must be a JSON array of regions, got ${kind}`);
  }
  if (doc.length === 0) throw new HandshakeError('no-regions', 'the region array is empty');
  const maxRegions = opts.maxRegions ?? DEFAULT_MAX_REGIONS;
  if (doc.length > maxRegions) {
    throw new HandshakeError('too-many-regions', `${doc.length} regions; at most ${maxRegions} accepted`);
  }
  const pageSizes = opts.pageSizes ?? KERNEL_PAGE_SIZES;
  const unknown = new Set<string>();
  let variant: HandshakeVariant = 'v1.1';
  let secretHidingFields = false;
  const regions = doc.map((item: unknown, index: number): GuestRegion => {
    if (item === null || typeof item !== 'object' || Array.isArray(item)) {
      throw new HandshakeError('bad-region', `region ${index} must be an object, got ${Array.isArray(item) ? 'an array' : item === null ? 'null' : typeof item}`, index);
    }
    const obj = item as Record<string, unknown>;
    const base = field(obj, 'base_host_virt_addr', index, true);
    const size = field(obj, 'size', index, true);
    const offset = field(obj, 'offset', index, true);
    const ps = field(obj, 'page_size', index, false);
    const psKib = field(obj, 'page_size_kib', index, false);
    let pageSize = PAGE_SIZE;
    let pageSizeSource: PageSizeSource = 'default';
    if (ps !== undefined) {
      if (psKib !== undefined && psKib !== ps) {
        throw new HandshakeError('page-size', `region ${index}: page_size ${ps} and page_size_kib ${psKib} disagree (both are in bytes)`, index);
      }
      pageSize = ps;
      pageSizeSource = 'page_size';
      variant = 'v1.12';
    } else if (psKib !== undefined) {
      pageSize = psKib;
      pageSizeSource = 'page_size_kib';
      if (variant === 'v1.1') variant = 'v1.7';
    }
    const fieldName = pageSizeSource === 'default' ? 'page size' : pageSizeSource;
    if (!pageSizes.includes(pageSize)) {
      const kibHint = pageSizeSource === 'page_size_kib' && pageSizes.includes(pageSize * 1024)
        ? ` (page_size_kib carries BYTES despite its name: Firecracker sends ${pageSize * 1024}, not ${pageSize})` : '';
      throw new HandshakeError('page-size', `region ${index}: ${fieldName} ${pageSize} is not a page size this kernel backs ` +
        `(${pageSizes.map(human).join(', ')})${kibHint}`, index);
    }
    if (base === 0) throw new HandshakeError('bad-field', `region ${index}: base_host_virt_addr is 0 (the null page is never guest memory)`, index);
    if (size === 0) throw new HandshakeError('bad-field', `region ${index}: size is 0`, index);
    if (base + size > MAX_ADDRESS) {
      throw new HandshakeError('bad-field', `region ${index}: [${hex(base)}, +${hex(size)}) ends beyond the user address space`, index);
    }
    if (offset + size > MAX_ADDRESS) {
      throw new HandshakeError('bad-field', `region ${index}: offset ${offset} + size ${size} overflows`, index);
    }
    for (const [name, v] of [['base_host_virt_addr', base], ['size', size], ['offset', offset]] as const) {
      if (v % pageSize !== 0) {
        throw new HandshakeError('unaligned', `region ${index}: ${name} ${hex(v)} is not a multiple of the page size ${human(pageSize)}`, index);
      }
    }
    // A null-prototype object, so a "__proto__" key sent by a peer stays a plain field.
    const extra = Object.create(null) as Record<string, unknown>;
    for (const k of Object.keys(obj)) {
      if ((KNOWN_FIELDS as readonly string[]).includes(k)) continue;
      Object.defineProperty(extra, k, { value: obj[k], enumerable: true, writable: true, configurable: true });
      unknown.add(k);
      if ((SECRET_HIDING_FIELDS as readonly string[]).includes(k)) secretHidingFields = true;
    }
    return { index, baseHostVirtAddr: base, size, offset, pageSize, pageSizeSource, extra };
  });
  return { regions, variant, unknownFields: [...unknown].sort(), secretHidingFields };
}

/** Checks the regions against each other and against the memory file. */
export function checkLayout(regions: readonly GuestRegion[], memFileSize?: number): string[] {
  const warnings: string[] = [];
  if (memFileSize !== undefined) {
    for (const r of regions) {
      if (r.offset + r.size > memFileSize) {
        throw new HandshakeError('out-of-file', `region ${r.index}: file range [${hex(r.offset)}, ${hex(r.offset + r.size)}) ` +
          `lies outside the ${memFileSize}-byte memory file`, r.index);
      }
    }
  }
  const byBase = [...regions].sort((a, b) => a.baseHostVirtAddr - b.baseHostVirtAddr);
  for (let i = 1; i < byBase.length; i++) {
    const p = byBase[i - 1];
    const r = byBase[i];
    if (!p || !r) continue;
    if (p.baseHostVirtAddr + p.size > r.baseHostVirtAddr) {
      throw new HandshakeError('overlap', `regions ${p.index} and ${r.index} overlap in host memory: ` +
        `[${hex(p.baseHostVirtAddr)}, ${hex(p.baseHostVirtAddr + p.size)}) and [${hex(r.baseHostVirtAddr)}, ${hex(r.baseHostVirtAddr + r.size)})`, r.index);
    }
  }
  const byOffset = [...regions].sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < byOffset.length; i++) {
    const p = byOffset[i - 1];
    const r = byOffset[i];
    if (!p || !r) continue;
    if (p.offset + p.size > r.offset) {
      throw new HandshakeError('overlap', `regions ${p.index} and ${r.index} overlap in the memory file: ` +
        `[${hex(p.offset)}, ${hex(p.offset + p.size)}) and [${hex(r.offset)}, ${hex(r.offset + r.size)})`, r.index);
    }
  }
  if (memFileSize !== undefined) {
    const total = regions.reduce((s, r) => s + r.size, 0);
    if (total < memFileSize) {
      warnings.push(`the regions cover ${total} of the memory file's ${memFileSize} bytes`);
    }
  }
  const sizes = new Set(regions.map((r) => r.pageSize));
  if (sizes.size > 1) warnings.push(`regions use different page sizes: ${[...sizes].map(human).join(', ')}`);
  return warnings;
}

/** Checks the number of fds that arrived and classifies the layout. */
export function checkFds(fdCount: number, secretHidingFields: boolean, opts: ValidateOptions = {}): FdLayout {
  switch (fdCount) {
    case 0:
      throw new HandshakeError('fds', 'no file descriptor arrived with the message (expected the userfaultfd as SCM_RIGHTS)');
    case 1:
      if (secretHidingFields) {
        // Regions describe guest_memfd memory, but the guest_memfd and bitmap fds are missing.
        throw new HandshakeError('fds', 'regions carry secret-hiding fields (gpa_start / is_guest_memfd) but only one fd arrived; ' +
          'that protocol sends three [uffd, guest_memfd, userfault bitmap]');
      }
      return 'mainline';
    case 3:
      if ((opts.secretHiding ?? 'reject') === 'accept') return 'secret-hiding';
      throw new HandshakeError('unsupported', 'three fds arrived: this is the Firecracker feature/secret-hiding handshake ' +
        '[uffd, guest_memfd, userfault bitmap], which serves guest_memfd memory through a second socket protocol on a patched ' +
        'kernel; it is not supported (only mainline Firecracker, one fd)');
    default:
      throw new HandshakeError('fds', `${fdCount} fds arrived; Firecracker sends exactly one (the userfaultfd)` +
        (fdCount === 2 ? '' : ' (or three on the secret-hiding branch)'));
  }
}

/**
 * The whole check: payload, fd count and memory-file size in; a Handshake out, or a
 * HandshakeError naming the first problem. Nothing here touches the fds: on error the
 * caller closes all of them.
 */
export function validateHandshake(payload: string | Uint8Array, fdCount: number, opts: ValidateOptions = {}): Handshake {
  const { regions, variant, unknownFields, secretHidingFields } = parseRegions(payload, opts);
  const fdLayout = checkFds(fdCount, secretHidingFields, opts);
  const warnings = checkLayout(regions, opts.memFileSize);
  const totalSize = regions.reduce((s, r) => s + r.size, 0);
  return { regions, variant, fdLayout, totalSize, unknownFields, warnings };
}

export interface EncodeOptions {
  /** Which page-size fields to include, as each Firecracker generation does. */
  variant: HandshakeVariant | 'page_size_only';
}

/**
 * The payload Firecracker would send for these regions (used by our test client):
 * v1.1 three fields; v1.7 adds page_size_kib; v1.12 sends page_size and page_size_kib;
 * 'page_size_only' sends page_size without the deprecated field (as FC 2.0 will).
 */
export function encodeHandshake(regions: readonly { baseHostVirtAddr: number; size: number; offset: number; pageSize: number }[],
  opts: EncodeOptions = { variant: 'v1.12' }): string {
  return JSON.stringify(regions.map((r) => {
    const o: Record<string, number> = { base_host_virt_addr: r.baseHostVirtAddr, size: r.size, offset: r.offset };
    if (opts.variant === 'v1.12' || opts.variant === 'page_size_only') o.page_size = r.pageSize;
    if (opts.variant === 'v1.12' || opts.variant === 'v1.7') o.page_size_kib = r.pageSize;
    return o;
  }));
}
