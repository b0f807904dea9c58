// `serve --metrics`: the supervisor's figures in the Prometheus text format (version
// 0.0.4), over HTTP on a Unix socket or a loopback TCP port — never on a public address:
// the figures tell who is restoring what.
//
//   curl -s --unix-socket /run/uffd-metrics.sock http://x/metrics
//   curl -s http://127.0.0.1:9464/metrics
import * as fs from 'node:fs';
import * as http from 'node:http';
import type { SupervisorSnapshot } from './supervisor.js';

export type MetricsAddress = { kind: 'unix'; path: string } | { kind: 'tcp'; host: string; port: number };

/** "/path/to.sock" or "127.0.0.1:PORT" / "[::1]:PORT" / "localhost:PORT". */
export function parseMetricsAddress(v: string): MetricsAddress {
  const tcp = /^(127\.0\.0\.1|localhost|\[::1\]):(\d{1,5})$/.exec(v);
  if (tcp) {
    const port = Number(tcp[2]);
    if (port < 1 || port > 65535) throw new Error(`--metrics port ${port} is not 1..65535`);
    return { kind: 'tcp', host: tcp[1] === '[::1]' ? '::1' : tcp[1] ?? '127.0.0.1', port };
  }
  if (v.includes('/')) return { kind: 'unix', path: v };
  throw new Error(`--metrics wants a Unix socket path (containing a "/") or a loopback address 127.0.0.1:PORT (got "${v}"); ` +
    'other addresses are refused: the figures name the VMs being restored');
}

export interface ConnectionCounts {
  accepted: number;
  rejected: Record<string, number>;
}

/** Renders the snapshot in the Prometheus text format. */
export function renderPrometheus(s: SupervisorSnapshot, conns: ConnectionCounts, startedAt: number): string {
  const out: string[] = [];
  const metric = (name: string, type: string, help: string, samples: [string, number][]): void => {
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const [labels, v] of samples) out.push(`${name}${labels} ${Number.isFinite(v) ? v : 0}`);
  };
  const label = (k: string, v: string | number): string => `{${k}="${String(v).replace(/["\\\n]/g, '_')}"}`;
  const t = s.totals;
  metric('uffd_serve_up_seconds', 'gauge', 'Seconds since the supervisor started.', [['', (Date.now() - startedAt) / 1000]]);
  metric('uffd_serve_connections_total', 'counter', 'Connections whose handshake was accepted.', [['', conns.accepted]]);
  metric('uffd_serve_connections_rejected_total', 'counter', 'Connections refused, by reason code.',
    Object.entries(conns.rejected).map(([k, v]) => [label('code', k), v]));
  metric('uffd_serve_sessions_active', 'gauge', 'VMs being served now.', [['', s.sessionsActive]]);
  metric('uffd_serve_sessions_started_total', 'counter', 'Sessions started.', [['', s.sessionsStarted]]);
  metric('uffd_serve_sessions_ended_total', 'counter', 'Sessions ended, by end reason.',
    Object.entries(s.sessionsEnded).map(([k, v]) => [label('reason', k), v]));
  metric('uffd_serve_engine_processes', 'gauge', 'Engine processes alive (serving or spare).', [['', s.engineProcesses]]);
  metric('uffd_serve_engine_spares', 'gauge', 'Idle engine processes ready for a new VM or a hand-over.', [['', s.spares]]);
  metric('uffd_serve_engine_restarts_total', 'counter', 'Engine processes that died while serving a VM.', [['', s.restarts]]);
  metric('uffd_serve_handovers_total', 'counter', 'Sessions handed to a new engine process after a death.', [['', s.handovers]]);
  metric('uffd_serve_sessions_given_up_total', 'counter', 'Sessions ended because their engines kept dying.', [['', s.gaveUp]]);
  metric('uffd_serve_faults_total', 'counter', 'Page faults read by the engines, by kind.',
    (['missing', 'minor', 'wp', 'rwp'] as const).map((k) => [label('kind', k), t.faults[k]]));
  metric('uffd_serve_pages_total', 'counter', 'Pages filled, by cause.',
    (['demand', 'readahead', 'background'] as const).map((k) => [label('cause', k), t.pages[k]]));
  metric('uffd_serve_pages_zero_filled_total', 'counter', 'Pages filled with zeros (after a balloon REMOVE).', [['', t.pages.zeroFilled]]);
  metric('uffd_serve_bytes_total', 'counter', 'Bytes filled.', [['', t.bytes]]);
  metric('uffd_serve_eexist_total', 'counter', 'Fills that found the page already there (races, hand-overs).', [['', t.eexist]]);
  metric('uffd_serve_eagain_retries_total', 'counter', 'Fills retried on EAGAIN.', [['', t.retries]]);
  metric('uffd_serve_errors_total', 'counter', 'Fills that failed.', [['', t.errors]]);
  metric('uffd_serve_removes_total', 'counter', 'Balloon REMOVE events.', [['', t.removes]]);
  // The engines count latency in log2 buckets of µs: bucket i holds [2^i, 2^(i+1)).
  const hist = t.histogram;
  let cum = 0;
  let sum = 0;
  const buckets: [string, number][] = [];
  hist.forEach((v, i) => {
    cum += v;
    sum += v * 1.5 * 2 ** i; // the bucket's midpoint: the engines keep no exact sum
    buckets.push([`{le="${2 ** (i + 1) / 1e6}"}`, cum]);
  });
  buckets.push(['{le="+Inf"}', cum]);
  out.push('# HELP uffd_serve_fault_latency_seconds Engine-side fault latency (read to resolving ioctl); _sum estimated from bucket midpoints.',
    '# TYPE uffd_serve_fault_latency_seconds histogram');
  for (const [l, v] of buckets) out.push(`uffd_serve_fault_latency_seconds_bucket${l} ${v}`);
  out.push(`uffd_serve_fault_latency_seconds_sum ${sum / 1e6}`, `uffd_serve_fault_latency_seconds_count ${cum}`);
  metric('uffd_serve_session_pages', 'gauge', 'Pages of each live session.',
    s.live.map((x) => [`{session="${x.id}",peer_pid="${x.peerPid}"}`, x.totalPages]));
  metric('uffd_serve_session_pages_served', 'gauge', 'Pages each live session has been served so far.',
    s.live.map((x) => [`{session="${x.id}",peer_pid="${x.peerPid}"}`, x.pagesServed]));
  metric('uffd_serve_session_engine_restarts', 'gauge', 'Engine deaths each live session survived.',
    s.live.map((x) => [`{session="${x.id}",peer_pid="${x.peerPid}"}`, x.restarts]));
  return out.join('\n') + '\n';
}

/** Serves GET /metrics (any path) at the address; close() stops it (and removes the socket file). */
export async function serveMetrics(addr: MetricsAddress, render: () => string): Promise<{ close(): Promise<void>; where: string }> {
  const server = http.createServer((req, res) => {
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET' }).end();
      return;
    }
    let body: string;
    try {
      body = render();
    } catch (e) {
      res.writeHead(500, { 'content-type': 'text/plain' }).end(`${(e as Error).message}\n`);
      return;
    }
    res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' }).end(req.method === 'HEAD' ? undefined : body);
  });
  if (addr.kind === 'unix') {
    try {
      if (fs.lstatSync(addr.path).isSocket()) fs.unlinkSync(addr.path);
    } catch { /* absent */ }
  }
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    if (addr.kind === 'unix') server.listen(addr.path, () => resolve());
    else server.listen(addr.port, addr.host, () => resolve());
  });
  if (addr.kind === 'unix') fs.chmodSync(addr.path, 0o600);
  server.unref();
  const a = server.address();
  const where = addr.kind === 'unix' ? addr.path : typeof a === 'object' && a ? `${addr.host}:${a.port}` : `${addr.host}:${addr.port}`;
  return {
    where,
    close: () => new Promise<void>((r) => {
      server.closeAllConnections();
      server.close(() => r());
    }),
  };
}
