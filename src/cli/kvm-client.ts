// node dist/src/cli/kvm-client.js: the process entry of the KVM client
// (src/restore/kvm-client.ts says what it does). Prints one JSON line
// ({"ok":true,"checksum":...,"expected":...}). Exit: 0 ok, 1 a wrong checksum or page, 2 an error.
import { KvmClientOptions, runKvmClient } from '../restore/kvm-client.js';
import { OptionSpec, parseArgs } from './args.js';

const SPEC: OptionSpec = {
  socket: { type: 'string', help: 'handler socket' },
  memFile: { type: 'string', help: 'memory file' },
  ramSize: { type: 'size', default: '16M', help: 'guest RAM' },
  stride: { type: 'number', default: 4096, help: 'bytes between the u32s the guest folds into its checksum' },
  fileOffset: { type: 'size', default: 0, help: 'where guest RAM starts in the memory file' },
  hugetlb: { type: 'boolean', default: false, help: 'back guest RAM with 2 MiB hugetlb pages' },
};

if (require.main === module) {
  let o: KvmClientOptions;
  try {
    o = parseArgs<KvmClientOptions & Record<string, unknown>>(process.argv.slice(2), SPEC);
    if (!o.socket || !o.memFile) throw new Error('--socket and --mem-file are required');
  } catch (e) {
    console.error(`kvm-client: ${(e as Error).message}`);
    process.exit(2);
  }
  runKvmClient(o).then((r) => {
    console.log(JSON.stringify(r));
    process.exit(r.ok ? 0 : 1);
  }, (e: unknown) => {
    console.error(`kvm-client: ${e instanceof Error ? e.message : String(e)}`);
    process.exit(2);
  });
}
