// The Firecracker handshake parser/validator: every generation of the payload, and the
// hostile ones. Pure functions: no kernel involved.
import assert from 'node:assert/strict';
import {
  checkFds, encodeHandshake, HandshakeError, jsonValueEnd, parseRegions, validateHandshake,
} from '../src/restore/handshake.js';
import { at } from './helpers/at.js';

const MiB = 1 << 20;
const GiB = 1 << 30;
const BASE = 0x7f0000000000;

function rejects(payload: string | object, fds: number, code: string, re: RegExp, memFileSize?: number, opts = {}): void {
  const text = typeof payload === 'string' ? payload : JSON.stringify(payload);
  assert.throws(() => validateHandshake(text, fds, { memFileSize, ...opts }), (e: unknown) => {
    assert.ok(e instanceof HandshakeError, `expected HandshakeError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    assert.match(e.message, re);
    assert.match(e.message, /^invalid Firecracker handshake: /);
    return true;
  });
}

describe('handshake: accepted variants', () => {
  it('v1.1-style three fields: page size defaults to 4096', () => {
    const h = validateHandshake(`[{"base_host_virt_addr":${BASE},"size":${128 * MiB},"offset":0}]`, 1, { memFileSize: 128 * MiB });
    assert.equal(h.variant, 'v1.1');
    assert.equal(h.fdLayout, 'mainline');
    assert.equal(h.regions.length, 1);
    assert.deepEqual({ ...at(h.regions, 0), extra: { ...at(h.regions, 0).extra } }, {
      index: 0, baseHostVirtAddr: BASE, size: 128 * MiB, offset: 0, pageSize: 4096, pageSizeSource: 'default', extra: {},
    });
    assert.equal(h.totalSize, 128 * MiB);
    assert.deepEqual(h.warnings, []);
    assert.deepEqual(h.unknownFields, []);
  });

  it('v1.7 page_size_kib carries bytes', () => {
    const h = validateHandshake(JSON.stringify([{ base_host_virt_addr: BASE, size: 4 * MiB, offset: 0, page_size_kib: 2 * MiB }]), 1,
      { memFileSize: 4 * MiB });
    assert.equal(h.variant, 'v1.7');
    assert.equal(at(h.regions, 0).pageSize, 2 * MiB);
    assert.equal(at(h.regions, 0).pageSizeSource, 'page_size_kib');
  });

  it('v1.12 page_size with the deprecated page_size_kib alongside', () => {
    const h = validateHandshake(JSON.stringify([{ base_host_virt_addr: BASE, size: 64 * MiB, offset: 0, page_size: 4096, page_size_kib: 4096 }]), 1);
    assert.equal(h.variant, 'v1.12');
    assert.equal(at(h.regions, 0).pageSize, 4096);
    assert.equal(at(h.regions, 0).pageSizeSource, 'page_size');
  });

  it('page_size alone (no deprecated field)', () => {
    const h = validateHandshake(JSON.stringify([{ base_host_virt_addr: BASE, size: 2 * GiB, offset: 0, page_size: GiB }]), 1);
    assert.equal(at(h.regions, 0).pageSize, GiB);
  });

  it('multi-region packed back to back, as Firecracker lays out x86 memory around the MMIO gap', () => {
    const regions = [
      { baseHostVirtAddr: BASE, size: 3 * GiB, offset: 0, pageSize: 4096 },
      { baseHostVirtAddr: BASE + 8 * GiB, size: 1 * GiB, offset: 3 * GiB, pageSize: 4096 },
    ];
    for (const variant of ['v1.1', 'v1.7', 'v1.12', 'page_size_only'] as const) {
      const h = validateHandshake(encodeHandshake(regions, { variant }), 1, { memFileSize: 4 * GiB });
      assert.equal(h.regions.length, 2);
      assert.equal(h.totalSize, 4 * GiB);
      assert.deepEqual(h.regions.map((r) => [r.baseHostVirtAddr, r.size, r.offset, r.pageSize]),
        regions.map((r) => [r.baseHostVirtAddr, r.size, r.offset, r.pageSize]));
      assert.equal(h.variant, variant === 'page_size_only' ? 'v1.12' : variant);
    }
  });

  it('regions listed out of order, adjacent in host VA and in the file', () => {
    const h = validateHandshake(JSON.stringify([
      { base_host_virt_addr: BASE + 2 * MiB, size: 2 * MiB, offset: 0 },
      { base_host_virt_addr: BASE, size: 2 * MiB, offset: 2 * MiB },
    ]), 1, { memFileSize: 4 * MiB });
    assert.equal(h.regions.length, 2);
  });

  it('accepts and reports unknown extra fields; a "__proto__" key stays a plain field', () => {
    const h = validateHandshake(`[{"base_host_virt_addr":${BASE},"size":4096,"offset":0,"page_size":4096,"future":{"x":1},"__proto__":{"polluted":true}}]`, 1);
    assert.deepEqual(h.unknownFields, ['__proto__', 'future']);
    assert.deepEqual(at(h.regions, 0).extra.future, { x: 1 });
    assert.equal(({} as Record<string, unknown>).polluted, undefined);
    assert.equal(Object.getPrototypeOf(at(h.regions, 0).extra), null);
  });

  it('warns when the regions do not cover the whole memory file, and on mixed page sizes', () => {
    const h = validateHandshake(JSON.stringify([
      { base_host_virt_addr: BASE, size: 2 * MiB, offset: 0, page_size: 2 * MiB },
      { base_host_virt_addr: BASE + 4 * MiB, size: 4096, offset: 2 * MiB, page_size: 4096 },
    ]), 1, { memFileSize: 8 * MiB });
    assert.equal(h.warnings.length, 2);
    assert.match(at(h.warnings, 0), /cover 2101248 of the memory file's 8388608 bytes/);
    assert.match(at(h.warnings, 1), /different page sizes: 2 MiB, 4 KiB/);
  });

  it('a byte payload (Buffer slice) parses like a string', () => {
    const buf = Buffer.from(`xx[{"base_host_virt_addr":${BASE},"size":4096,"offset":4096}]`);
    const h = validateHandshake(buf.subarray(2), 1, { memFileSize: 8192 });
    assert.equal(at(h.regions, 0).offset, 4096);
  });

  it('three fds classify as secret-hiding when the caller opts in', () => {
    const p = JSON.stringify([{ base_host_virt_addr: BASE, size: 4096, offset: 0, page_size: 4096, gpa_start: 0, is_guest_memfd: true }]);
    const h = validateHandshake(p, 3, { secretHiding: 'accept' });
    assert.equal(h.fdLayout, 'secret-hiding');
    assert.deepEqual(h.unknownFields, ['gpa_start', 'is_guest_memfd']);
  });
});

describe('handshake: rejected', () => {
  const ok = { base_host_virt_addr: BASE, size: 8192, offset: 0 };

  it('bad JSON, with the text shown', () => {
    rejects('[{"base_host_virt_addr": 1,', 1, 'bad-json', /not valid JSON.*base_host_virt_addr/);
    rejects('', 1, 'bad-json', /not valid JSON/);
    rejects('\u0000\u0001garbage', 1, 'bad-json', /not valid JSON/);
  });

  it('not an array', () => {
    rejects({ regions: [ok] }, 1, 'not-array', /must be a JSON array of regions, got an object/);
    rejects('null', 1, 'not-array', /got null/);
    rejects('42', 1, 'not-array', /got number/);
    rejects('"[]"', 1, 'not-array', /got string/);
  });

  it('zero regions and too many regions', () => {
    rejects([], 1, 'no-regions', /empty/);
    const many = Array.from({ length: 5 }, (_, i) => ({ base_host_virt_addr: BASE + i * 8192, size: 4096, offset: i * 4096 }));
    rejects(many, 1, 'too-many-regions', /5 regions; at most 4/, undefined, { maxRegions: 4 });
  });

  it('a payload above the size limit, before parsing', () => {
    rejects('[' + ' '.repeat(100) + ']', 1, 'too-large', /at most 64/, undefined, { maxPayloadBytes: 64 });
  });

  it('elements that are not objects', () => {
    rejects([ok, null], 1, 'bad-region', /region 1 must be an object, got null/);
    rejects([[1, 2, 3]], 1, 'bad-region', /region 0 must be an object, got an array/);
    rejects([7], 1, 'bad-region', /got number/);
  });

  it('missing fields', () => {
    for (const f of ['base_host_virt_addr', 'size', 'offset']) {
      const r: Record<string, number> = { ...ok };
      delete r[f];
      rejects([r], 1, 'bad-field', new RegExp(`region 0 has no "${f}" field`));
    }
  });

  it('non-integer, negative, string, null and out-of-range numbers', () => {
    rejects([{ ...ok, size: 4096.5 }], 1, 'bad-field', /"size" must be an integer, got 4096.5/);
    rejects([{ ...ok, offset: -4096 }], 1, 'bad-field', /"offset" must not be negative/);
    rejects([{ ...ok, size: '8192' }], 1, 'bad-field', /"size" must be a number, got string "8192"/);
    rejects([{ ...ok, base_host_virt_addr: null }], 1, 'bad-field', /must be a number, got null/);
    rejects([{ ...ok, page_size: true }], 1, 'bad-field', /"page_size" must be a number, got boolean/);
    rejects(`[{"base_host_virt_addr":18446744073709551615,"size":4096,"offset":0}]`, 1, 'bad-field', /beyond 2\^53/);
    rejects(`[{"base_host_virt_addr":1e400,"size":4096,"offset":0}]`, 1, 'bad-field', /must be an integer|beyond/);
    rejects([{ ...ok, base_host_virt_addr: 0 }], 1, 'bad-field', /base_host_virt_addr is 0/);
    rejects([{ ...ok, size: 0 }], 1, 'bad-field', /size is 0/);
    rejects([{ ...ok, base_host_virt_addr: Number.MAX_SAFE_INTEGER - 4095, size: 8192 }], 1, 'bad-field', /beyond the user address space/);
  });

  it('page sizes the kernel does not back', () => {
    rejects([{ ...ok, page_size: 8192 }], 1, 'page-size', /page_size 8192 is not a page size this kernel backs \(4 KiB, 2 MiB, 1 GiB\)/);
    rejects([{ ...ok, page_size: 0 }], 1, 'page-size', /page_size 0/);
    rejects([{ ...ok, page_size: 65536 }], 1, 'page-size', /65536/);
    // page_size_kib in actual KiB (following the misleading name): a hint says bytes.
    rejects([{ ...ok, page_size_kib: 4 }], 1, 'page-size', /BYTES despite its name: Firecracker sends 4096, not 4/);
    rejects([{ ...ok, page_size_kib: 2048 }], 1, 'page-size', /sends 2097152, not 2048/);
    // A kernel without 1 GiB hugetlb (caller passes what the host supports).
    rejects([{ ...ok, size: GiB, page_size: GiB }], 1, 'page-size', /1 GiB is not|1073741824 is not/, undefined, { pageSizes: [4096, 2 * MiB] });
  });

  it('page_size and page_size_kib that disagree', () => {
    rejects([{ ...ok, page_size: 4096, page_size_kib: 2 * MiB }], 1, 'page-size', /page_size 4096 and page_size_kib 2097152 disagree/);
  });

  it('base, size or offset not aligned to the page size', () => {
    rejects([{ ...ok, base_host_virt_addr: BASE + 0x800 }], 1, 'unaligned', /base_host_virt_addr 0x7f0000000800 is not a multiple of the page size 4 KiB/);
    rejects([{ ...ok, size: 6000 }], 1, 'unaligned', /size 0x1770/);
    rejects([{ ...ok, offset: 512 }], 1, 'unaligned', /offset 0x200/);
    rejects([{ base_host_virt_addr: BASE, size: 4 * MiB, offset: 4096, page_size: 2 * MiB }], 1, 'unaligned', /offset 0x1000 is not a multiple of the page size 2 MiB/);
    rejects([{ base_host_virt_addr: BASE + 4096, size: 2 * MiB, offset: 0, page_size_kib: 2 * MiB }], 1, 'unaligned', /base_host_virt_addr.*2 MiB/);
  });

  it('regions outside the memory file', () => {
    rejects([{ ...ok, offset: 4096 }], 1, 'out-of-file', /region 0: file range \[0x1000, 0x3000\) lies outside the 8191-byte memory file/, 8191);
    rejects([ok, { base_host_virt_addr: BASE + MiB, size: 4096, offset: 8192 }], 1, 'out-of-file', /region 1/, 8192);
    rejects([ok], 1, 'out-of-file', /0-byte memory file/, 0);
  });

  it('overlapping regions in host VA', () => {
    rejects([
      { base_host_virt_addr: BASE, size: 3 * 4096, offset: 0 },
      { base_host_virt_addr: BASE + 2 * 4096, size: 4096, offset: 3 * 4096 },
    ], 1, 'overlap', /regions 0 and 1 overlap in host memory/);
    // Identical regions.
    rejects([ok, ok], 1, 'overlap', /overlap in host memory/);
    // Containment, listed in reverse order.
    rejects([
      { base_host_virt_addr: BASE + 4096, size: 4096, offset: MiB },
      { base_host_virt_addr: BASE, size: MiB, offset: 0 },
    ], 1, 'overlap', /regions 1 and 0 overlap in host memory/);
  });

  it('overlapping regions in the file', () => {
    rejects([
      { base_host_virt_addr: BASE, size: 8192, offset: 0 },
      { base_host_virt_addr: BASE + MiB, size: 8192, offset: 4096 },
    ], 1, 'overlap', /regions 0 and 1 overlap in the memory file: \[0x0, 0x2000\) and \[0x1000, 0x3000\)/);
  });

  it('zero fds, two fds, four fds', () => {
    rejects([ok], 0, 'fds', /no file descriptor arrived/);
    rejects([ok], 2, 'fds', /2 fds arrived; Firecracker sends exactly one/);
    rejects([ok], 4, 'fds', /4 fds arrived.*three on the secret-hiding branch/);
  });

  it('three fds (secret-hiding branch) by default', () => {
    rejects([ok], 3, 'unsupported', /secret-hiding.*not supported/);
  });

  it('secret-hiding region fields with one fd', () => {
    rejects([{ ...ok, gpa_start: 0, is_guest_memfd: true }], 1, 'fds', /secret-hiding fields.*only one fd/);
  });

  it('checkFds alone', () => {
    assert.equal(checkFds(1, false), 'mainline');
    assert.equal(checkFds(3, true, { secretHiding: 'accept' }), 'secret-hiding');
    assert.throws(() => checkFds(3, false), HandshakeError);
  });

  it('parseRegions reports the first bad region by index', () => {
    try {
      parseRegions(JSON.stringify([ok, { ...ok, base_host_virt_addr: BASE + MiB }, { ...ok, size: 1 }]));
      assert.fail('should throw');
    } catch (e) {
      assert.ok(e instanceof HandshakeError);
      assert.equal(e.region, 2);
    }
  });
});

describe('handshake: framing (jsonValueEnd)', () => {
  it('finds the end of a complete array and reports incomplete ones', () => {
    const full = encodeHandshake([{ baseHostVirtAddr: BASE, size: 4096, offset: 0, pageSize: 4096 }]);
    assert.equal(jsonValueEnd(full), full.length);
    assert.equal(jsonValueEnd('  ' + full + '  trailing'), full.length + 2);
    for (let cut = 0; cut < full.length; cut++) assert.equal(jsonValueEnd(full.slice(0, cut)), -1, `cut at ${cut}`);
  });
  it('ignores brackets inside strings and escaped quotes', () => {
    const t = '[{"a":"]}\\"]"}]';
    assert.equal(JSON.parse(t)[0].a, ']}"]');
    assert.equal(jsonValueEnd(t), t.length);
    assert.equal(jsonValueEnd('[{"a":"]}'), -1);
  });
  it('treats a top-level scalar as complete (JSON.parse then rejects it)', () => {
    assert.equal(jsonValueEnd('42'), 2);
    assert.equal(jsonValueEnd('   '), -1);
  });
});
