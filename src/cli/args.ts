// A small, strict option parser shared by the commands: --name value, --flag, --no-flag.
import { parseSize } from '../sizes.js';

export { parseSize };

export type OptionSpec = Record<string, { type: 'string' | 'number' | 'boolean' | 'size'; default?: unknown; help: string }>;

export function parseArgs<T extends Record<string, unknown>>(args: string[], spec: OptionSpec): T & { _: string[] } {
  const out: Record<string, unknown> = { _: [] };
  for (const [k, v] of Object.entries(spec)) {
    if (v.default === undefined) continue;
    out[k] = v.type === 'size' && typeof v.default === 'string' ? parseSize(v.default) : v.default;
  }
  for (let i = 0; i < args.length; i++) {
    const a = args[i] ?? '';
    if (!a.startsWith('--')) { (out._ as string[]).push(a); continue; }
    let key = a.slice(2);
    let value: string | undefined;
    const eq = key.indexOf('=');
    if (eq >= 0) { value = key.slice(eq + 1); key = key.slice(0, eq); }
    const camel = key.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
    const negated = (camel[2] ?? '').toLowerCase() + camel.slice(3);
    if (camel.startsWith('no') && spec[negated]?.type === 'boolean') {
      out[negated] = false;
      continue;
    }
    const s = spec[camel];
    if (!s) throw new Error(`unknown option --${key}; options: ${Object.keys(spec).map((k) => '--' + k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase())).join(' ')}`);
    if (s.type === 'boolean') { out[camel] = value === undefined ? true : value !== 'false'; continue; }
    if (value === undefined) {
      value = args[++i];
      if (value === undefined) throw new Error(`option --${key} needs a value`);
    }
    if (s.type === 'number') {
      const n = Number(value);
      if (!Number.isFinite(n)) throw new Error(`option --${key} needs a number, got "${value}"`);
      out[camel] = n;
    } else if (s.type === 'size') out[camel] = parseSize(value);
    else out[camel] = value;
  }
  return out as T & { _: string[] };
}

export function helpText(command: string, summary: string, spec: OptionSpec): string {
  const rows = Object.entries(spec).map(([k, v]) => {
    const flag = '--' + k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase()) + (v.type === 'boolean' ? '' : ` <${v.type}>`);
    const def = v.default !== undefined ? ` (default ${String(v.default)})` : '';
    return `  ${flag.padEnd(28)} ${v.help}${def}`;
  });
  return `usage: uffd-engine ${command} [options]\n\n${summary}\n\noptions:\n${rows.join('\n')}`;
}
