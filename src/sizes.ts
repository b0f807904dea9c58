// Byte sizes as people write and read them: 4096, 64K, 2M, 1G, 1T in, "1.5 MiB" out.

/** Parses sizes like 4096, 64K, 2M, 1G, 1T (binary units; an optional B or iB suffix). */
export function parseSize(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(?:i?[bB])?$/.exec(text.trim());
  const digits = m?.[1];
  if (!m || digits === undefined) throw new Error(`"${text}" is not a size (use e.g. 4096, 64K, 2M, 1G)`);
  const unit = (m[2] ?? '').toLowerCase() as '' | 'k' | 'm' | 'g' | 't';
  const mult = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 }[unit];
  return Math.round(Number(digits) * mult);
}

/** A byte count for people: "512 B", "1.5 MiB" (binary units, one decimal). */
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'] as const;
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i] ?? 'TiB'}`;
}
