// node dist/bench/native.js: the command line of src/bench/native.ts (also reached through `uffd-engine bench`).
import { nativeMain } from '../src/bench/native.js';

nativeMain(process.argv.slice(2)).then((code) => { process.exitCode = code; }, (e: Error) => {
  console.error(e.message);
  process.exitCode = 1;
});
