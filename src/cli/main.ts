#!/usr/bin/env node
// uffd-engine command line: each command lives in its own module under src/cli/ (beside them,
// fc-client.ts, touch-client.ts and kvm-client.ts are the test clients' process entries).
const COMMANDS: Record<string, { module: string; summary: string }> = {
  probe: { module: './probe.js', summary: "what this kernel's userfaultfd can do for each memory type" },
  demo: { module: './demo.js', summary: 'serve a generated snapshot to several faulting threads and verify every byte' },
  bench: { module: './bench.js', summary: 'load benchmark, side by side with a native reference' },
  serve: { module: './serve.js', summary: 'Firecracker-compatible snapshot restore handler on a Unix socket' },
  snapshot: { module: './snapshot.js', summary: 'upload a memory file (and its manifest) to object storage for serve --mem-url' },
  wss: { module: './wss.js', summary: 'working-set scanning and access tracking' },
};

function usage(): string {
  const lines = Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(8)} ${c.summary}`);
  return `usage: uffd-engine <command> [options]\n\ncommands:\n${lines.join('\n')}\n\n` +
    `uffd-engine <command> --help shows the options of a command.`;
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    console.log(usage());
    return name ? 0 : 2;
  }
  const cmd = COMMANDS[name];
  if (!cmd) {
    console.error(`uffd-engine: unknown command "${name}"\n\n${usage()}`);
    return 2;
  }
  const mod = require(cmd.module) as { run(args: string[]): Promise<number> };
  return mod.run(rest);
}

main(process.argv.slice(2)).then(
  (code) => { process.exitCode = code; },
  (err: unknown) => {
    console.error(`uffd-engine: ${err instanceof Error ? err.message : String(err)}`);
    process.exitCode = 1;
  },
);
