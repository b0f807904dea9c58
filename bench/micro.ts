// node dist/bench/micro.js: the command line of src/bench/micro.ts (also reached through `uffd-engine bench`).
import { mainMicro } from '../src/bench/micro.js';

mainMicro(process.argv.slice(2)).then((code) => { process.exitCode = code; }, (e: Error) => {
  console.error(e.message);
  process.exitCode = 1;
});
