// A report a person can open: per case a latency histogram (faulting-side latency of
// every first touch, log2 buckets, engine next to native) and a throughput-over-time plot
// (MiB/s made resident in the faulting process, sampled every 25 ms from /proc/PID/status,
// each run aligned on the start of its measured phase). HTML with inline SVG, or one SVG
// with everything stacked. No external assets, no scripts.
import type { CaseResult, SideRun, SideSummary, Spread } from './engine-bench.js';
import { describeConfig, formatBytes, formatNum, formatRate } from './engine-bench.js';
import type { MicroResult } from './micro.js';

export interface TargetRow {
  name: string;
  target: string;
  measured: string;
  /** true met, false missed, null not measured. */
  met: boolean | null;
}

export interface ReportDoc {
  title: string;
  command: string;
  when: string;
  machine: string;
  cases: CaseResult[];
  targets?: TargetRow[];
  rss?: { lines: string[] };
  micro?: MicroResult[];
  notes?: string[];
}

const COLORS = { native: '#4e79a7', engine: '#f28e2b' } as const;
const FONT = 'font-family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif"';

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** About 5 round tick values covering [0, max]. */
function ticks(max: number, count = 5): number[] {
  if (!(max > 0)) return [0];
  const raw = max / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  const out: number[] = [];
  for (let v = 0; ; v += step) {
    out.push(+v.toPrecision(12));
    if (v >= max * 0.9999) break;
  }
  return out;
}

function phaseOf(c: CaseResult): 'initial' | 'steady' {
  return c.config.bounce > 0 ? 'steady' : 'initial';
}

function runsOf(c: CaseResult, side: 'engine' | 'native'): SideRun[] {
  return c.runs.filter((r) => r.side === side);
}

/** Latency histogram: share of first touches per log2 bucket, engine and native side by side. */
export function histogramSvg(c: CaseResult, x0 = 0, y0 = 0, width = 720, height = 280): string {
  const phase = phaseOf(c);
  const sides = (['native', 'engine'] as const).filter((s) => runsOf(c, s).length > 0);
  const sums: Record<string, number[]> = {};
  let maxBucket = 0;
  for (const s of sides) {
    const acc: number[] = [];
    for (const r of runsOf(c, s)) {
      const p = phase === 'steady' ? r.steady : r.initial;
      p?.histogram.forEach((b, i) => { acc[i] = (acc[i] ?? 0) + b.count; if (b.count) maxBucket = Math.max(maxBucket, i); });
    }
    const total = acc.reduce((a, b) => a + (b ?? 0), 0) || 1;
    sums[s] = Array.from({ length: maxBucket + 1 }, (_, i) => (100 * (acc[i] ?? 0)) / total);
  }
  for (const s of sides) sums[s] = Array.from({ length: maxBucket + 1 }, (_, i) => sums[s]?.[i] ?? 0);
  const left = 56, right = 16, top = 34, bottom = 52;
  const pw = width - left - right, ph = height - top - bottom;
  const n = maxBucket + 1;
  const ymax = Math.max(1, ...sides.flatMap((s) => sums[s] ?? []));
  const yt = ticks(ymax);
  const ytop = yt[yt.length - 1] || ymax;
  const slot = pw / n;
  const bw = (slot * 0.8) / Math.max(1, sides.length);
  const parts: string[] = [];
  parts.push(`<g transform="translate(${x0},${y0})" ${FONT} font-size="11">`);
  parts.push(`<text x="${left}" y="16" font-size="13" font-weight="600">Fault latency, faulting side (${phase === 'steady' ? 'steady state' : 'initial population'}; all runs)</text>`);
  for (const v of yt) {
    const y = top + ph - (v / ytop) * ph;
    parts.push(`<line x1="${left}" x2="${left + pw}" y1="${y.toFixed(1)}" y2="${y.toFixed(1)}" stroke="#ddd"/>`);
    parts.push(`<text x="${left - 6}" y="${(y + 4).toFixed(1)}" text-anchor="end">${formatNum(v, v < 10 ? 1 : 0)}%</text>`);
  }
  sides.forEach((s, k) => {
    sums[s]?.forEach((v, i) => {
      if (v <= 0) return;
      const h = (v / ytop) * ph;
      const x = left + i * slot + slot * 0.1 + k * bw;
      parts.push(`<rect x="${x.toFixed(1)}" y="${(top + ph - h).toFixed(1)}" width="${bw.toFixed(1)}" height="${h.toFixed(1)}" fill="${COLORS[s]}">` +
        `<title>${s}: ${v.toFixed(2)}% in [${i === 0 ? 0 : 2 ** i}, ${2 ** (i + 1)}) µs</title></rect>`);
    });
  });
  for (let i = 0; i < n; i++) {
    const x = left + i * slot + slot / 2;
    const label = i === 0 ? '<2' : 2 ** i >= 1000 ? `${formatNum(2 ** i / 1000, 0)}k` : String(2 ** i);
    parts.push(`<text x="${x.toFixed(1)}" y="${top + ph + 14}" text-anchor="middle">${esc(label)}</text>`);
  }
  parts.push(`<line x1="${left}" x2="${left + pw}" y1="${top + ph}" y2="${top + ph}" stroke="#333"/>`);
  parts.push(`<text x="${left + pw / 2}" y="${top + ph + 32}" text-anchor="middle">latency bucket, µs (bucket i = [2^i, 2^(i+1)))</text>`);
  parts.push(legend(sides, left + pw - 170, top - 4));
  parts.push('</g>');
  return parts.join('\n');
}

function legend(sides: readonly ('native' | 'engine')[], x: number, y: number): string {
  return sides.map((s, i) => `<rect x="${x + i * 85}" y="${y - 9}" width="10" height="10" fill="${COLORS[s]}"/>` +
    `<text x="${x + i * 85 + 14}" y="${y}">${s}</text>`).join('');
}

/** Rate series (t, MiB/s) from a run's RSS samples, t relative to the start of its measured phase. */
export function rateSeries(r: SideRun): { t: number; mbs: number }[] {
  const out: { t: number; mbs: number }[] = [];
  for (let i = 1; i < r.samples.length; i++) {
    const a = r.samples[i - 1];
    const b = r.samples[i];
    if (!a || !b) continue;
    const dt = b.t - a.t;
    if (dt <= 0) continue;
    const mbs = Math.max(0, (b.bytes - a.bytes) / dt / (1024 * 1024));
    out.push({ t: (a.t + b.t) / 2 - r.phaseWindow.start, mbs });
  }
  return out;
}

/**
 * Throughput over time: one line per run, aligned on the start of its measured phase.
 * When one side's runs last far longer than the other's (e.g. the page-at-a-time fc
 * handler against a prefetching engine), each side gets its own panel and time axis.
 */
export function throughputSvg(c: CaseResult, x0 = 0, y0 = 0, width = 720, height = 280): string {
  const spanOf = (runs: SideRun[]) => Math.max(0.01, ...runs.map((r) => r.phaseWindow.end - r.phaseWindow.start));
  const nat = runsOf(c, 'native');
  const eng = runsOf(c, 'engine');
  const split = nat.length > 0 && eng.length > 0 && Math.max(spanOf(nat), spanOf(eng)) / Math.min(spanOf(nat), spanOf(eng)) > 4;
  const parts: string[] = [];
  const id = c.config.name.replace(/[^a-z0-9]/gi, '');
  parts.push(`<g transform="translate(${x0},${y0})" ${FONT} font-size="11">`);
  parts.push(`<text x="56" y="16" font-size="13" font-weight="600">Throughput over time: MiB/s made resident (faulting process, 25 ms samples)</text>`);
  if (split) {
    const h = (height - 34) / 2;
    parts.push(panel(nat, `${id}n`, 0, 34, width, h, 'native'));
    parts.push(panel(eng, `${id}e`, 0, 34 + h, width, h, 'engine'));
  } else {
    parts.push(panel(c.runs, `${id}a`, 0, 34, width, height - 34, null));
  }
  if (c.config.kind === 'wp') {
    parts.push(`<text x="66" y="54" fill="#a00">wp faults change protection only: resident memory does not grow, so this plot stays flat</text>`);
  }
  parts.push(legend((['native', 'engine'] as const).filter((s) => runsOf(c, s).length > 0), width - 186, 30));
  parts.push('</g>');
  return parts.join('\n');
}

function panel(runs: SideRun[], id: string, x0: number, y0: number, width: number, height: number, label: string | null): string {
  const left = 56, right = 16, top = 8, bottom = label ? 30 : 44;
  const pw = width - left - right, ph = height - top - bottom;
  const series = runs.map((r) => ({ r, s: rateSeries(r) }));
  const span = Math.max(0.01, ...runs.map((r) => r.phaseWindow.end - r.phaseWindow.start));
  const tmin = -0.1 * span;
  const tmax = 1.15 * span;
  const inRange = series.flatMap((x) => x.s.filter((p) => p.t >= tmin && p.t <= tmax));
  const ymax = Math.max(1, ...inRange.map((p) => p.mbs));
  const yt = ticks(ymax, label ? 3 : 5);
  const ytop = yt[yt.length - 1] || ymax;
  const X = (t: number) => left + ((t - tmin) / (tmax - tmin)) * pw;
  const Y = (v: number) => top + ph - (Math.min(v, ytop) / ytop) * ph;
  const parts: string[] = [];
  parts.push(`<g transform="translate(${x0},${y0})">`);
  parts.push(`<defs><clipPath id="clip-${id}"><rect x="${left}" y="${top}" width="${pw}" height="${ph}"/></clipPath></defs>`);
  for (const v of yt) {
    parts.push(`<line x1="${left}" x2="${left + pw}" y1="${Y(v).toFixed(1)}" y2="${Y(v).toFixed(1)}" stroke="#ddd"/>`);
    parts.push(`<text x="${left - 6}" y="${(Y(v) + 4).toFixed(1)}" text-anchor="end">${formatNum(v, 0)}</text>`);
  }
  for (const t of ticks(tmax).filter((x) => x <= tmax)) {
    parts.push(`<line x1="${X(t).toFixed(1)}" x2="${X(t).toFixed(1)}" y1="${top + ph}" y2="${top + ph + 4}" stroke="#333"/>`);
    parts.push(`<text x="${X(t).toFixed(1)}" y="${top + ph + 15}" text-anchor="middle">${formatNum(t, t < 1 ? 2 : 1)}</text>`);
  }
  // The measured phase starts at 0 on this axis.
  parts.push(`<line x1="${X(0).toFixed(1)}" x2="${X(0).toFixed(1)}" y1="${top}" y2="${top + ph}" stroke="#999" stroke-dasharray="4 3"/>`);
  for (const { r, s } of series) {
    if (s.length === 0) continue;
    const d = s.map((p, i) => `${i ? 'L' : 'M'}${X(p.t).toFixed(1)},${Y(p.mbs).toFixed(1)}`).join(' ');
    parts.push(`<path d="${d}" fill="none" stroke="${COLORS[r.side]}" stroke-width="1.6" stroke-opacity="0.8" clip-path="url(#clip-${id})">` +
      `<title>${r.side} run ${r.rep}</title></path>`);
    const end = r.phaseWindow.end - r.phaseWindow.start;
    parts.push(`<line x1="${X(end).toFixed(1)}" x2="${X(end).toFixed(1)}" y1="${top + ph - 8}" y2="${top + ph}" stroke="${COLORS[r.side]}"/>`);
  }
  parts.push(`<line x1="${left}" x2="${left + pw}" y1="${top + ph}" y2="${top + ph}" stroke="#333"/>`);
  if (label) parts.push(`<text x="${left + 6}" y="${top + 12}" fill="${COLORS[label as 'native' | 'engine']}" font-weight="600">${label} (own time axis)</text>`);
  else parts.push(`<text x="${left + pw / 2}" y="${top + ph + 30}" text-anchor="middle">seconds since the start of the measured phase (marks on the axis: where each run's phase ended)</text>`);
  parts.push('</g>');
  return parts.join('\n');
}

function spreadText(s: Spread | null | undefined, f: (v: number) => string): string {
  if (!s) return '–';
  return s.min === s.max ? f(s.median) : `${f(s.median)} <small>[${f(s.min)}–${f(s.max)}]</small>`;
}

function caseTable(c: CaseResult): string {
  const phase = phaseOf(c);
  const e: SideSummary | null = c.engine ? c.engine[phase] : null;
  const n: SideSummary | null = c.native ? c.native[phase] : null;
  const rows: [string, (s: SideSummary) => Spread | null, (v: number) => string][] = [
    ['faults/s', (s) => s.faultsPerSec, formatRate],
    ['MiB/s', (s) => s.mbPerSec, (v) => formatNum(v, 0)],
    ['latency p50 µs', (s) => s.p50, (v) => formatNum(v)],
    ['latency p90 µs', (s) => s.p90, (v) => formatNum(v)],
    ['latency p99 µs', (s) => s.p99, (v) => formatNum(v)],
    ['latency max µs', (s) => s.max, (v) => formatNum(v, 0)],
    ['handler CPU µs/fault', (s) => s.cpuPerFaultUs, (v) => formatNum(v, 2)],
  ];
  const body = rows.map(([label, get, f]) => {
    const nv = n ? get(n) : null;
    const ev = e ? get(e) : null;
    const ratio = nv && ev && nv.median > 0 ? `${(ev.median / nv.median).toFixed(2)}×` : '';
    return `<tr><th>${label}</th><td>${spreadText(nv, f)}</td><td>${spreadText(ev, f)}</td><td>${ratio}</td></tr>`;
  }).join('\n');
  const mism = `<tr><th>pages that did not verify</th><td>${n ? n.mismatches : '–'}</td><td>${e ? e.mismatches : '–'}</td><td></td></tr>`;
  const nh = c.runs.find((r) => r.side === 'native')?.handler ?? c.nativeSkipped ?? 'not run';
  return `<table><thead><tr><th></th><th>native<br><small>${esc(nh)}</small></th><th>engine<br><small>${c.config.workers} worker(s)</small></th><th>engine/native</th></tr></thead>
<tbody>${body}\n${mism}</tbody></table>`;
}

function caseSection(c: CaseResult): string {
  const extra: string[] = [];
  if (c.memcpy) extra.push(`memcpy ${formatBytes(c.memcpy.size)}: ${c.memcpy.gibPerSec.toFixed(2)} GiB/s` +
    (c.ratios.memcpy !== null ? `; engine MiB/s ÷ memcpy = ${c.ratios.memcpy.toFixed(2)}` : ''));
  const i = c.runs.find((r) => r.engine)?.engine;
  if (i) {
    extra.push(`engine (run 1): ${formatRate(i.faults.total)} userfaults, ${(100 * i.inlineShare).toFixed(0)}% inline, ` +
      `${i.faultsPerRead.toFixed(2)} faults/read, pages demand/readahead/background ${i.pages.demand}/${i.pages.readahead}/${i.pages.background}, ` +
      `dispatcher CPU ${i.dispatcherCpuSec.toFixed(3)} s, workers ${i.workersCpuSec.map((v) => v.toFixed(3)).join(' + ')} s`);
  }
  for (const n of c.notes) extra.push(`note: ${n}`);
  return `<section>
<h2>${esc(c.config.name)}</h2>
<p>${esc(describeConfig(c.config))}; ${c.config.repeat} repetition(s) per side; median [min–max]; ${c.ratios.phase === 'steady' ? 'steady state (bounce rounds)' : 'initial population'}.</p>
${caseTable(c)}
${extra.map((x) => `<p class="small">${esc(x)}</p>`).join('\n')}
<div class="plots">
<svg xmlns="http://www.w3.org/2000/svg" width="720" height="280" viewBox="0 0 720 280">${histogramSvg(c)}</svg>
<svg xmlns="http://www.w3.org/2000/svg" width="720" height="280" viewBox="0 0 720 280">${throughputSvg(c)}</svg>
</div>
</section>`;
}

export function renderHtml(doc: ReportDoc): string {
  const targets = doc.targets?.length ? `<section><h2>Targets</h2><table><thead><tr><th>target</th><th>goal</th><th>measured</th><th></th></tr></thead><tbody>
${doc.targets.map((t) => `<tr><th>${esc(t.name)}</th><td>${esc(t.target)}</td><td>${esc(t.measured)}</td><td>${t.met === null ? '–' : t.met ? '✔ met' : '✘ missed'}</td></tr>`).join('\n')}
</tbody></table></section>` : '';
  const rss = doc.rss ? `<section><h2>Memory</h2>${doc.rss.lines.map((l) => `<p>${esc(l)}</p>`).join('\n')}</section>` : '';
  const micro = doc.micro?.length ? `<section><h2>Micro-benchmarks</h2><table><thead><tr><th>operation</th><th>ns/op</th><th>p50 ns/op</th><th>±%</th></tr></thead><tbody>
${doc.micro.map((m) => `<tr><th>${esc(m.name)}</th><td>${m.nsPerOp.toFixed(1)}</td><td>${m.p50NsPerOp.toFixed(1)}</td><td>${m.rme.toFixed(1)}</td></tr>`).join('\n')}
</tbody></table></section>` : '';
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(doc.title)}</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1500px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0; } th, td { padding: .25em .8em; border-bottom: 1px solid #eee; text-align: right; }
th:first-child { text-align: left; font-weight: 500; } thead th { text-align: right; font-weight: 600; }
small, .small { color: #666; font-size: .85em; } code { background: #f4f4f4; padding: 0 .3em; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
</style></head><body>
<h1>${esc(doc.title)}</h1>
<p><code>${esc(doc.command)}</code></p>
<p class="small">${esc(doc.when)} · ${esc(doc.machine)}</p>
${(doc.notes ?? []).map((n) => `<p class="small">${esc(n)}</p>`).join('\n')}
${targets}
${doc.cases.map(caseSection).join('\n')}
${rss}
${micro}
</body></html>
`;
}

/** One SVG: a header, then per case a text summary and the two plots. */
export function renderSvg(doc: ReportDoc): string {
  const width = 1480;
  const parts: string[] = [];
  let y = 10;
  const text = (s: string, size = 12, weight = 'normal') => {
    y += size + 6;
    parts.push(`<text x="16" y="${y}" font-size="${size}" font-weight="${weight}" ${FONT}>${esc(s)}</text>`);
  };
  text(doc.title, 18, '600');
  text(doc.command, 11);
  text(`${doc.when} · ${doc.machine}`, 11);
  for (const n of doc.notes ?? []) text(n, 11);
  for (const t of doc.targets ?? []) text(`${t.met === null ? '–' : t.met ? '✔' : '✘'} ${t.name}: goal ${t.target}, measured ${t.measured}`, 12);
  for (const c of doc.cases) {
    y += 16;
    text(`${c.config.name}: ${describeConfig(c.config)}`, 14, '600');
    const phase = phaseOf(c);
    for (const side of ['native', 'engine'] as const) {
      const s = c[side]?.[phase];
      if (!s) continue;
      text(`${side}: ${formatRate(s.faultsPerSec.median)} faults/s, ${formatNum(s.mbPerSec.median, 0)} MiB/s, p50 ${formatNum(s.p50.median)} µs, ` +
        `p99 ${formatNum(s.p99.median)} µs, CPU ${s.cpuPerFaultUs ? formatNum(s.cpuPerFaultUs.median, 2) : '–'} µs/fault, mismatches ${s.mismatches} (median of ${s.runs})`, 12);
    }
    if (c.ratios.faultsPerSec !== null) text(`engine/native: throughput ${c.ratios.faultsPerSec.toFixed(2)}x, p50 ${c.ratios.p50?.toFixed(2)}x` +
      (c.ratios.memcpy !== null ? `, engine/memcpy ${c.ratios.memcpy.toFixed(2)}` : ''), 12);
    y += 8;
    parts.push(histogramSvg(c, 0, y));
    parts.push(throughputSvg(c, 740, y));
    y += 290;
  }
  if (doc.rss) for (const l of doc.rss.lines) text(l, 12);
  if (doc.micro?.length) {
    y += 10;
    text('Micro-benchmarks (ns/op)', 14, '600');
    for (const m of doc.micro) text(`${m.name}: ${m.nsPerOp.toFixed(1)} ns/op (p50 ${m.p50NsPerOp.toFixed(1)})`, 12);
  }
  y += 20;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${y}" viewBox="0 0 ${width} ${y}">
<rect width="100%" height="100%" fill="white"/>
${parts.join('\n')}
</svg>
`;
}
