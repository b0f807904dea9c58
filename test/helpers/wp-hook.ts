// A write-protect hook for the engine tests: runs in the engine's worker threads and
// records each page it is shown (address and a checksum of its bytes before the write).
import * as fs from 'node:fs';

export default function recordPage(addr: number, len: number, bytes: Uint8Array): void {
  let sum = 0;
  for (let i = 0; i < len; i += 64) sum = (sum * 31 + (bytes[i] ?? 0)) >>> 0;
  fs.appendFileSync(process.env.UFFD_TEST_WP_LOG as string, `${addr} ${sum}\n`);
}
