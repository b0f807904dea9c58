// node dist/src/cli/touch-client.js: the process entry of the touch client
// (src/restore/touch-client.ts says what it does). Prints one JSON line.
// Exit: 0 ok, 1 a wrong byte, 2 an error or time-out.
import { runTouchClient, TouchClientOptions } from '../restore/touch-client.js';
import { OptionSpec, parseArgs } from './args.js';

const SPEC: OptionSpec = {
  socket: { type: 'string', help: 'handler socket' },
  memFile: { type: 'string', help: 'memory file' },
  regions: { type: 'number', default: 1, help: 'regions' },
  regionSize: { type: 'size', help: 'bytes per region' },
  fileOffset: { type: 'size', default: 0, help: 'file offset of the first region' },
  touch: { type: 'string', help: 'JSON array of groups of global page indices to touch in order' },
  gapMs: { type: 'number', default: 100, help: 'sleep between touch groups' },
  watch: { type: 'boolean', default: false, help: 'watch population through pagemap until every page is present' },
  verifyAll: { type: 'boolean', default: false, help: 'compare every page with the file at the end' },
  waitStdin: { type: 'boolean', default: false, help: 'print {"ready":true} and wait for a line on stdin first' },
  prewarm: { type: 'boolean', default: false, help: "touch and free the regions' size of memory before mapping them (benchmarks: see uffd-bench --no-prewarm)" },
  timeoutMs: { type: 'number', default: 20000, help: 'exit 2 after this long' },
};

if (require.main === module) {
  let o: TouchClientOptions;
  try {
    o = parseArgs<TouchClientOptions & Record<string, unknown>>(process.argv.slice(2), SPEC);
    if (!o.socket || !o.memFile) throw new Error('--socket and --mem-file are required');
  } catch (e) {
    console.error(`touch-client: ${(e as Error).message}`);
    process.exit(2);
  }
  const timer = setTimeout(() => {
    console.error(`touch-client: timed out after ${o.timeoutMs} ms`);
    process.exit(2);
  }, o.timeoutMs);
  runTouchClient(o).then((r) => {
    clearTimeout(timer);
    console.log(JSON.stringify(r));
    process.exit(r.ok ? 0 : 1);
  }, (e: unknown) => {
    console.error(`touch-client: ${e instanceof Error ? e.message : String(e)}`);
    process.exit(2);
  });
}
