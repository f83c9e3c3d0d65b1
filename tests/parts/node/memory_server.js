'use strict';
// A real Node process for the node collector's tests and benchmarks.
//
// Serves its own memory figures over HTTP in the shapes the collector reads, and
// records exactly what it last served so a test can compare the collector's values
// with the process's own. Prints one JSON line on stdout once it listens:
//   {"httpPort": N, "inspectorUrl": "ws://..." | null, "pid": N}
//
// Options (argv): --mode=steady|leaky  --leak-bytes-per-second=N  --leak-cap-bytes=N
// Endpoints:
//   /memory          JSON.stringify(process.memoryUsage())
//   /nested          memoryUsage() deep inside a larger document, with v8.getHeapStatistics()
//   /metrics         prom-client style text (text/plain; version=0.0.4)
//   /openmetrics     the same as OpenMetrics text
//   /last-served     what the endpoints above last answered, and the v8 heap statistics
//   /leak            how much the leaky mode retains now
//   /fail/status500, /fail/malformed, /fail/truncated, /fail/no-heap,
//   /fail/slow?ms=N, /fail/huge   broken answers for the failure tests

const http = require('http');
const inspector = require('inspector');
const v8 = require('v8');

const options = Object.fromEntries(process.argv.slice(2).map((arg) => {
  const [key, value] = arg.replace(/^--/, '').split('=');
  return [key, value ?? 'true'];
}));
const mode = options.mode ?? 'steady';
const leakBytesPerSecond = Number(options['leak-bytes-per-second'] ?? 10 * 2 ** 20);
// The leaky mode stops growing here, so that it stays alive for as long as it is needed.
const leakCapBytes = Number(options['leak-cap-bytes'] ?? 512 * 2 ** 20);

const retained = [];
let retainedBytes = 0;
if (mode === 'leaky') {
  const ticksPerSecond = 10;
  // Small integers in a JS array take 8 bytes each on 64-bit Node (no pointer compression).
  const elementsPerTick = Math.max(1, Math.floor(leakBytesPerSecond / ticksPerSecond / 8));
  setInterval(() => {
    if (retainedBytes >= leakCapBytes) return;
    retained.push(new Array(elementsPerTick).fill(retained.length));
    retainedBytes += elementsPerTick * 8;
  }, 1000 / ticksPerSecond);
} else if (mode !== 'steady') {
  throw new Error(`unknown mode ${mode}`);
}

const lastServed = {};

function promText(memory, openmetrics) {
  const gauge = (name, help, value) =>
    `# HELP ${name} ${help}\n# TYPE ${name} gauge\n${name} ${value}\n`;
  return [
    gauge('process_resident_memory_bytes', 'Resident memory size in bytes.', memory.rss),
    gauge('nodejs_heap_size_total_bytes', 'Process heap size from Node.js in bytes.', memory.heapTotal),
    gauge('nodejs_heap_size_used_bytes', 'Process heap size used from Node.js in bytes.', memory.heapUsed),
    gauge('nodejs_external_memory_bytes', 'Node.js external memory size in bytes.', memory.external),
    ...v8.getHeapSpaceStatistics().map((space) =>
      `nodejs_heap_space_size_total_bytes{space="${space.space_name.replace(/_space$/, '')}"} ${space.space_size}\n`),
    openmetrics ? '# EOF\n' : '',
  ].join('');
}

function send(response, status, contentType, body) {
  response.writeHead(status, { 'Content-Type': contentType, 'Content-Length': Buffer.byteLength(body) });
  response.end(body);
}

const routes = {
  '/memory': (request, response) => {
    const memory = process.memoryUsage();
    lastServed.memory = memory;
    send(response, 200, 'application/json', JSON.stringify(memory));
  },
  '/nested': (request, response) => {
    const memory = process.memoryUsage();
    const heapStatistics = v8.getHeapStatistics();
    lastServed.nested = { memory, heapStatistics };
    send(response, 200, 'application/json', JSON.stringify({
      status: 'ok',
      checks: [{ name: 'database', heapUsed: 'not a number' }, { name: 'cache', ok: true }],
      runtime: { node: process.version, uptime: process.uptime(), process: { pid: process.pid, memory } },
      v8: heapStatistics,
    }));
  },
  '/metrics': (request, response) => {
    const memory = process.memoryUsage();
    lastServed.metrics = memory;
    send(response, 200, 'text/plain; version=0.0.4; charset=utf-8', promText(memory, false));
  },
  '/openmetrics': (request, response) => {
    const memory = process.memoryUsage();
    lastServed.openmetrics = memory;
    send(response, 200, 'application/openmetrics-text; version=1.0.0; charset=utf-8', promText(memory, true));
  },
  '/last-served': (request, response) => {
    send(response, 200, 'application/json', JSON.stringify({ ...lastServed, heapStatistics: v8.getHeapStatistics() }));
  },
  '/leak': (request, response) => {
    send(response, 200, 'application/json', JSON.stringify({ mode, retainedBytes, chunks: retained.length }));
  },
  '/fail/status500': (request, response) => {
    send(response, 500, 'application/json', JSON.stringify({ error: 'internal' }));
  },
  '/fail/malformed': (request, response) => {
    send(response, 200, 'application/json', '{"heapUsed": 1000, "heapTotal": ');
  },
  '/fail/no-heap': (request, response) => {
    send(response, 200, 'application/json', JSON.stringify({ status: 'ok', rss: process.memoryUsage().rss }));
  },
  '/fail/truncated': (request, response) => {
    // Promises a whole document, sends half of it and closes the connection.
    const body = JSON.stringify(process.memoryUsage());
    response.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
    response.write(body.slice(0, Math.floor(body.length / 2)), () => response.socket.destroy());
  },
  '/fail/slow': (request, response, query) => {
    const ms = Number(query.get('ms') ?? 10000);
    const timer = setTimeout(() => routes['/memory'](request, response), ms);
    response.on('close', () => clearTimeout(timer));
  },
  '/fail/huge': (request, response) => {
    // An endless JSON array: the reader must stop at its size cap.
    response.writeHead(200, { 'Content-Type': 'application/json' });
    const chunk = '0,'.repeat(32 * 1024);
    response.write('[');
    const writeMore = () => {
      while (!response.destroyed && response.write(chunk));
    };
    response.on('drain', writeMore);
    writeMore();
  },
};

const server = http.createServer((request, response) => {
  const url = new URL(request.url, 'http://localhost');
  const route = routes[url.pathname];
  if (route) {
    route(request, response, url.searchParams);
  } else {
    send(response, 404, 'text/plain', 'not found\n');
  }
});

server.listen(Number(options.port ?? 0), options.host ?? '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({
    httpPort: server.address().port,
    inspectorUrl: inspector.url() ?? null,
    pid: process.pid,
  }) + '\n');
});

process.on('SIGTERM', () => process.exit(0));
