// The registry of memory types. It discovers them: every module in this directory except
// the infrastructure below is a memory type and default-exports (or exports as
// `memoryType`) a MemoryType. Adding a type is adding one module; nothing else changes.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ConfigError } from '../kernel/errors.js';
import type { MemoryType } from './types.js';

export type { MemoryType, Region, RegionOptions, ResolveOp, MemoryTypeName, Availability } from './types.js';

/** Modules of this directory that are not memory types. */
const INFRASTRUCTURE = new Set(['index', 'types', 'check', 'probe', 'shared-mapping']);

function isMemoryType(x: unknown): x is MemoryType {
  const t = x as MemoryType | undefined;
  return !!t && typeof t === 'object' && typeof t.name === 'string' && Array.isArray(t.modes) &&
    Array.isArray(t.ops) && Array.isArray(t.pageSizes) && typeof t.create === 'function' &&
    typeof t.available === 'function' && typeof t.resolveOp === 'object' && typeof t.modeFeatures === 'object';
}

/**
 * Loads every memory-type module of a directory (compiled .js files). Throws when a module
 * exports no MemoryType or two modules claim one name, naming the file.
 */
export function loadMemoryTypes(dir: string): MemoryType[] {
  const out: MemoryType[] = [];
  const byName = new Map<string, string>();
  const files = fs.readdirSync(dir).filter((f) => f.endsWith('.js') && !INFRASTRUCTURE.has(f.slice(0, -3))).sort();
  for (const file of files) {
    const full = path.join(dir, file);
    const mod = require(full) as { default?: unknown; memoryType?: unknown };
    const t = isMemoryType(mod.default) ? mod.default : isMemoryType(mod.memoryType) ? mod.memoryType : undefined;
    if (!t) {
      throw new Error(`memory-types/${file} exports no MemoryType (default export or \`memoryType\`); ` +
        `every module in ${dir} other than ${[...INFRASTRUCTURE].join(', ')} must describe one memory type`);
    }
    const prev = byName.get(t.name);
    if (prev) throw new Error(`memory types in ${prev} and ${file} are both named "${t.name}"`);
    byName.set(t.name, file);
    out.push(t);
  }
  return out;
}

let registry: MemoryType[] | undefined;

/** All memory types, in a stable order (the built-in ones first, as the kernel grew them). */
export function memoryTypes(): MemoryType[] {
  if (!registry) {
    const order = ['anon', 'shmem', 'hugetlbfs', 'guest_memfd', 'file'];
    const rank = (n: string) => (order.includes(n) ? order.indexOf(n) : order.length);
    registry = loadMemoryTypes(__dirname).sort((a, b) => rank(a.name) - rank(b.name) || a.name.localeCompare(b.name));
  }
  return registry;
}

/** The memory type of that name; a ConfigError listing the known names otherwise. */
export function memoryType(name: string): MemoryType {
  const t = memoryTypes().find((x) => x.name === name);
  if (!t) throw new ConfigError(`unknown memory type "${name}"; known: ${memoryTypes().map((x) => x.name).join(', ')}`);
  return t;
}
