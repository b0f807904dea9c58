// uffd-engine probe [--json]: what this kernel's userfaultfd can do for each memory type,
// answered by the kernel (see src/memory-types/probe.ts and docs/kernel-layer.md).
import { OptionSpec, helpText, parseArgs } from './args.js';
import { formatProbe, probe } from '../memory-types/probe.js';

const SPEC: OptionSpec = {
  json: { type: 'boolean', default: false, help: 'print the report as JSON' },
  help: { type: 'boolean', default: false, help: 'show this help' },
};

export async function run(args: string[]): Promise<number> {
  const opts = parseArgs<{ json: boolean; help: boolean }>(args, SPEC);
  if (opts.help) {
    console.log(helpText('probe', "What this kernel's userfaultfd offers, and for every memory type whether a region " +
      'can be created here and which registration modes the kernel accepts (with the ioctls it advertises).', SPEC));
    return 0;
  }
  if (opts._.length) throw new Error(`probe takes no arguments (got ${opts._.join(' ')})`);
  const report = probe();
  console.log(opts.json ? JSON.stringify(report, null, 2) : formatProbe(report));
  return report.userfaultfd.ok ? 0 : 1;
}
