// Servers on 127.0.0.1 for the remote-source tests and bench/remote-bench.ts: a small Node
// HTTP server with Range support and fault injection (slow chunks, dropped connections, 5xx,
// truncated bodies, corrupted bytes), s3rver (an S3-compatible store in this process) and
// nginx (a child process with a generated config in a temp dir, when the machine has nginx).
import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

export interface Faults {
  /** Delay before answering a ranged GET of this offset (ms). */
  delayMs?: (offset: number, attempt: number) => number;
  /** Answer with this status instead (e.g. 503), or 0 for normal. */
  status?: (offset: number, attempt: number) => number;
  /** Send this many bytes of the body, then destroy the connection. */
  dropAfter?: (offset: number, attempt: number) => number | undefined;
  /** Flip one byte of the body. */
  corrupt?: (offset: number, attempt: number) => boolean;
}

export interface RangeServer {
  url: string;
  /** Ranged GETs per offset, in arrival order. */
  gets: { offset: number; len: number }[];
  close(): Promise<void>;
}

/** Serves `data` at /mem (and an optional manifest at /mem.manifest.json) with Range, ETag and If-Match. */
export async function startRangeServer(data: Uint8Array, opts: { manifest?: string; faults?: Faults; headSize?: number } = {}): Promise<RangeServer> {
  const etag = `"${crypto.createHash('md5').update(data).digest('hex')}"`;
  const gets: { offset: number; len: number }[] = [];
  const attempts = new Map<number, number>();
  const timers = new Set<NodeJS.Timeout>();
  const f = opts.faults ?? {};
  const server = http.createServer((req, res) => {
    if (req.url === '/mem.manifest.json') {
      if (opts.manifest === undefined) { res.writeHead(404).end(); return; }
      res.writeHead(200, { 'content-type': 'application/json' }).end(opts.manifest);
      return;
    }
    if (req.url !== '/mem') { res.writeHead(404).end(); return; }
    const size = data.length;
    if (req.method === 'HEAD') {
      res.writeHead(200, { 'content-length': String(opts.headSize ?? size), 'accept-ranges': 'bytes', etag }).end();
      return;
    }
    const m = /^bytes=(\d+)-(\d+)$/.exec(String(req.headers.range ?? ''));
    if (!m) { res.writeHead(200, { 'content-length': String(size) }).end(Buffer.from(data)); return; }
    if (req.headers['if-match'] && req.headers['if-match'] !== etag) { res.writeHead(412).end(); return; }
    const offset = Number(m[1]);
    const end = Math.min(Number(m[2]), size - 1);
    const attempt = attempts.get(offset) ?? 0;
    attempts.set(offset, attempt + 1);
    gets.push({ offset, len: end - offset + 1 });
    const answer = (): void => {
      const status = f.status?.(offset, attempt) ?? 0;
      if (status) { res.writeHead(status).end(); return; }
      let body = Buffer.from(data.subarray(offset, end + 1));
      if (f.corrupt?.(offset, attempt)) { body = Buffer.from(body); body[body.length >> 1] = (body[body.length >> 1] ?? 0) ^ 0xff; }
      res.writeHead(206, { 'content-length': String(end - offset + 1), 'content-range': `bytes ${offset}-${end}/${size}`, etag });
      const drop = f.dropAfter?.(offset, attempt);
      if (drop !== undefined) {
        res.write(body.subarray(0, drop), () => res.destroy());
        return;
      }
      res.end(body);
    };
    const delay = f.delayMs?.(offset, attempt) ?? 0;
    if (delay > 0) timers.add(setTimeout(answer, delay)); else answer();
  });
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}/mem`,
    gets,
    close: () => new Promise<void>((r) => {
      for (const t of timers) clearTimeout(t);
      server.closeAllConnections();
      server.close(() => r());
    }),
  };
}

export interface S3Store {
  endpoint: string;
  bucket: string;
  credentials: { accessKeyId: string; secretAccessKey: string };
  close(): Promise<void>;
}

/** s3rver on 127.0.0.1 (a free port), one bucket, objects in a temp dir. */
export async function startS3(bucket = 'snapshots'): Promise<S3Store> {
  const S3rver = require('s3rver') as new (o: object) => { run(): Promise<AddressInfo>; close(): Promise<void> };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uffd-engine-s3rver-'));
  const s = new S3rver({ port: 0, address: '127.0.0.1', silent: true, directory: dir, configureBuckets: [{ name: bucket }] });
  const addr = await s.run();
  return {
    endpoint: `http://127.0.0.1:${addr.port}`,
    bucket,
    credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
    async close() {
      await s.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

export interface Nginx {
  url: (name: string) => string;
  close(): Promise<void>;
}

/** Why nginx cannot be used here, or undefined. */
export function nginxMissing(): string | undefined {
  const r = spawnSync('sh', ['-c', 'command -v nginx || ls /usr/sbin/nginx'], { encoding: 'utf8' });
  return r.status === 0 ? undefined : 'nginx is not installed (apt-get install nginx)';
}

function nginxPath(): string {
  return spawnSync('sh', ['-c', 'command -v nginx || echo /usr/sbin/nginx'], { encoding: 'utf8' }).stdout.trim();
}

/** Starts nginx serving `root` on a free 127.0.0.1 port (its own config, logs and pid in a temp dir). */
export async function startNginx(root: string): Promise<Nginx> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'uffd-engine-nginx-'));
  // A free port: bind, read it, release (nginx binds it right after; retried if taken).
  for (let attempt = 0; ; attempt++) {
    const port = await new Promise<number>((resolve) => {
      const s = http.createServer();
      s.listen(0, '127.0.0.1', () => { const p = (s.address() as AddressInfo).port; s.close(() => resolve(p)); });
    });
    const conf = path.join(dir, 'nginx.conf');
    fs.writeFileSync(conf, `daemon off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path ${dir}/body; proxy_temp_path ${dir}/proxy; fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi; scgi_temp_path ${dir}/scgi;
  server { listen 127.0.0.1:${port}; root ${root}; sendfile on; }
}
`);
    const child: ChildProcess = spawn(nginxPath(), ['-c', conf, '-p', dir, '-e', `${dir}/error.log`], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr?.on('data', (b) => { stderr += String(b); });
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    // Wait until it answers (or exits).
    const deadline = Date.now() + 20_000;
    let up = false;
    while (!up && Date.now() < deadline && child.exitCode === null) {
      up = await new Promise<boolean>((r) => {
        const req = http.request({ host: '127.0.0.1', port, method: 'HEAD', path: '/' }, (res) => { res.resume(); r(true); });
        req.on('error', () => r(false));
        req.end();
      });
      if (!up) await new Promise((r) => setTimeout(r, 20));
    }
    if (!up) {
      child.kill('SIGKILL');
      await exited;
      if (attempt < 3 && /in use/.test(stderr)) continue;
      throw new Error(`nginx did not start: ${stderr || fs.readFileSync(`${dir}/error.log`, 'utf8')}`);
    }
    return {
      url: (name) => `http://127.0.0.1:${port}/${name}`,
      async close() {
        child.kill('SIGTERM');
        await exited;
        fs.rmSync(dir, { recursive: true, force: true });
      },
    };
  }
}
