// Access heat over time as a picture a person can open: address (x, in equal buckets) by
// interval (y, time going down). Each cell's brightness is the fraction of the bucket's pages
// touched in that interval; its hue says how many of those were written (red) or only read
// (blue). Written as a standalone SVG, or an HTML page around it.
import * as fs from 'node:fs';

export interface HeatFrame {
  interval: number;
  /** Milliseconds since tracking started, at the end of the interval. */
  atMs: number;
  /** Per bucket: fraction of pages accessed / written in the interval (0..1). */
  accessed: ArrayLike<number>;
  written: ArrayLike<number>;
}

export interface HeatmapOptions {
  title: string;
  /** Lines under the title (method, region, workload). */
  subtitle?: string[];
  regionBytes: number;
  /** Whether reads are visible (false: only writes were tracked). */
  seesReads: boolean;
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

function sizeLabel(bytes: number): string {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = bytes;
  while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
  return `${Number.isInteger(v) ? v : v.toFixed(1)} ${u[i]}`;
}

/** Cell colour: white when untouched; blue (read only) to red (all written), darker when more of the bucket was touched. */
export function heatColor(accessed: number, written: number): string {
  if (accessed <= 0 && written <= 0) return '#f7f7f7';
  const a = Math.min(1, Math.max(accessed, written));
  const share = a > 0 ? Math.min(1, written / a) : 0;
  // hue 220 (blue) .. 0 (red); lightness 88% (a tiny fraction) .. 38% (all pages)
  const hue = Math.round(220 * (1 - share));
  const light = Math.round(88 - 50 * Math.sqrt(a));
  return `hsl(${hue},75%,${light}%)`;
}

export function heatmapSvg(frames: HeatFrame[], o: HeatmapOptions): string {
  const buckets = frames[0]?.accessed.length ?? 1;
  const cellW = Math.max(2, Math.floor(900 / buckets));
  const cellH = frames.length > 60 ? 6 : 14;
  const left = 90;
  const top = 34 + 16 * (o.subtitle?.length ?? 0) + 10;
  const width = left + buckets * cellW + 20;
  const plotH = frames.length * cellH;
  const height = top + plotH + 110;
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">`);
  out.push(`<rect width="100%" height="100%" fill="white"/>`);
  out.push(`<text x="${left}" y="20" font-size="16" font-weight="bold">${esc(o.title)}</text>`);
  (o.subtitle ?? []).forEach((l, i) => out.push(`<text x="${left}" y="${38 + 16 * i}" fill="#444">${esc(l)}</text>`));
  frames.forEach((f, row) => {
    const y = top + row * cellH;
    for (let b = 0; b < buckets; b++) {
      const w = f.written[b] ?? 0;
      const a = o.seesReads ? f.accessed[b] ?? 0 : w;
      const c = heatColor(a, w);
      if (c === '#f7f7f7') continue;
      out.push(`<rect x="${left + b * cellW}" y="${y}" width="${cellW}" height="${cellH}" fill="${c}"><title>interval ${f.interval}, bucket ${b}: ` +
        `${(a * 100).toFixed(1)}% accessed, ${(w * 100).toFixed(1)}% written</title></rect>`);
    }
    if (frames.length <= 60 || row % 5 === 0) {
      out.push(`<text x="${left - 6}" y="${y + cellH - 3}" text-anchor="end" fill="#444">${f.interval} · ${(f.atMs / 1000).toFixed(1)}s</text>`);
    }
  });
  // background for untouched cells and frame
  out.splice(2, 0, `<rect x="${left}" y="${top}" width="${buckets * cellW}" height="${plotH}" fill="#f7f7f7"/>`);
  out.push(`<rect x="${left}" y="${top}" width="${buckets * cellW}" height="${plotH}" fill="none" stroke="#999"/>`);
  // address axis
  for (let i = 0; i <= 4; i++) {
    const x = left + (buckets * cellW * i) / 4;
    out.push(`<line x1="${x}" y1="${top + plotH}" x2="${x}" y2="${top + plotH + 5}" stroke="#666"/>`);
    out.push(`<text x="${x}" y="${top + plotH + 18}" text-anchor="middle" fill="#444">+${sizeLabel((o.regionBytes * i) / 4)}</text>`);
  }
  out.push(`<text x="${left + (buckets * cellW) / 2}" y="${top + plotH + 36}" text-anchor="middle">address in region (${buckets} buckets of ${sizeLabel(o.regionBytes / buckets)})</text>`);
  out.push(`<text x="14" y="${top - 8}" fill="#444">interval · time</text>`);
  // legend
  const ly = top + plotH + 56;
  const legend: [number, number, string][] = o.seesReads
    ? [[1, 0, 'read only'], [1, 0.5, 'half written'], [1, 1, 'written'], [0.1, 0, '10% of bucket read'], [0.1, 0.1, '10% written']]
    : [[1, 1, 'written'], [0.1, 0.1, '10% of bucket written']];
  legend.forEach(([a, w, label], i) => {
    const x = left + i * 150;
    out.push(`<rect x="${x}" y="${ly}" width="14" height="14" fill="${heatColor(a, w)}" stroke="#999"/>`);
    out.push(`<text x="${x + 20}" y="${ly + 12}">${esc(label)}</text>`);
  });
  out.push(`<text x="${left}" y="${ly + 34}" fill="#666">brightness: fraction of the bucket's pages touched in the interval; hue: share of them written` +
    `${o.seesReads ? '' : ' (this method sees writes only)'}</text>`);
  out.push('</svg>');
  return out.join('\n');
}

export function heatmapHtml(frames: HeatFrame[], o: HeatmapOptions): string {
  return `<!doctype html>\n<html><head><meta charset="utf-8"><title>${esc(o.title)}</title>` +
    `<style>body{margin:16px;font-family:sans-serif}</style></head><body>\n${heatmapSvg(frames, o)}\n</body></html>\n`;
}

/** Writes an .svg or an .html (any other extension) heatmap file. */
export function writeHeatmap(file: string, frames: HeatFrame[], o: HeatmapOptions): void {
  fs.writeFileSync(file, file.toLowerCase().endsWith('.svg') ? heatmapSvg(frames, o) : heatmapHtml(frames, o));
}
