// node dist/bench/rss.js: the command line of src/bench/rss.ts (also reached through `uffd-engine bench`).
import { rssMain } from '../src/bench/rss.js';

rssMain(process.argv.slice(2)).then((code) => process.exit(code), (e: Error) => {
  console.error(e.message);
  process.exit(1);
});
