// Worker thread that touches native memory (a write fills, a read copies the bytes back),
// so that a test's main thread can take the userfaultfd fault the access raises.
import { parentPort, workerData } from 'node:worker_threads';
import { viewOf } from '../../src/kernel/libc.js';

const { addr, len, op, value } = workerData as { addr: number; len: number; op: 'write' | 'read'; value?: number };
parentPort!.postMessage({ type: 'start' });
const view = new Uint8Array(viewOf(addr, len));
if (op === 'write') {
  view.fill(value ?? 0);
  parentPort!.postMessage({ type: 'done' });
} else {
  parentPort!.postMessage({ type: 'done', bytes: view.slice() });
}
