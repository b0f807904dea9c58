// node dist/src/cli/fc-client.js: the process entry of the Firecracker stand-in
// (src/restore/fc-client.ts says what it does). Parses the options, arms a watchdog thread
// (a fault nobody serves blocks its thread for good), restores, prints one JSON line.
// Exit: 0 ok, 1 a wrong byte, 2 an error or time-out, 3 the handler hung up (onHandlerHangup).
import { FcClientOptions, describeMismatch, runFcClient } from '../restore/fc-client.js';
import { startWatchdog } from '../restore/watchdog.js';
import { helpText, OptionSpec, parseArgs } from './args.js';

export const FC_CLIENT_OPTIONS: OptionSpec = {
  socket: { type: 'string', help: 'Unix socket the handler listens on' },
  memFile: { type: 'string', help: 'snapshot memory file the pages are checked against' },
  regions: { type: 'number', default: 1, help: 'number of guest memory regions' },
  regionSize: { type: 'size', help: 'bytes per region (default: the file split evenly)' },
  fileOffset: { type: 'size', default: 0, help: 'where the first region starts in the file' },
  pageSizeField: { type: 'string', default: 'v1.12', help: 'payload fields: v1.1 | v1.7 (page_size_kib) | v1.12 (both) | page_size_only' },
  hugetlb: { type: 'boolean', default: false, help: 'back the regions with 2 MiB hugetlb pages' },
  threads: { type: 'number', default: 1, help: 'reader threads' },
  stripePages: { type: 'number', help: 'pages each reader takes in turn' },
  remove: { type: 'string', help: 'region:offset:length to madvise(DONTNEED) during the restore; must then read zeros' },
  timeoutMs: { type: 'number', default: 30000, help: 'give up (exit 2) after this long' },
  removeGate: { type: 'string', help: 'with --remove: create FILE.ready, then wait for FILE before the madvise (tests)' },
  startGate: { type: 'string', help: 'after the handshake, create FILE.ready, then wait for FILE before touching anything (tests)' },
  onHandlerHangup: { type: 'string', default: 'ignore', help: 'ignore | fail: exit 3 at once if the handler hangs up while pages are still missing' },
};

async function main(argv: string[]): Promise<number> {
  if (argv.includes('--help')) {
    console.log(helpText('fc-client (node dist/src/cli/fc-client.js)', 'Restore guest memory through a Firecracker-style UFFD handshake and verify it.', FC_CLIENT_OPTIONS));
    return 0;
  }
  const o = parseArgs<FcClientOptions & Record<string, unknown>>(argv, FC_CLIENT_OPTIONS);
  if (!o.socket || !o.memFile) throw new Error('--socket and --mem-file are required');
  if (!['v1.1', 'v1.7', 'v1.12', 'page_size_only'].includes(o.pageSizeField ?? 'v1.12')) {
    throw new Error(`--page-size-field must be v1.1, v1.7, v1.12 or page_size_only, got "${o.pageSizeField}"`);
  }
  if (!['ignore', 'fail'].includes(o.onHandlerHangup ?? 'ignore')) {
    throw new Error(`--on-handler-hangup must be ignore or fail, got "${o.onHandlerHangup}"`);
  }
  const watchdog = startWatchdog(o.timeoutMs ?? 30000, 'fc-client');
  const r = await runFcClient(o);
  watchdog.cancel();
  console.log(JSON.stringify(r));
  if (r.mismatch) {
    console.error(`fc-client: ${describeMismatch(r.mismatch)}`);
    return 1;
  }
  return 0;
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (e: unknown) => {
      console.error(`fc-client: ${e instanceof Error ? e.message : String(e)}`);
      process.exit(2);
    },
  );
}
