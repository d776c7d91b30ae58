// The ws package's echo server (its README's example), for perf/ws.sh.
// Usage: node server.js [PORT]; prints "listening on 127.0.0.1:PORT" to stderr.
const { WebSocketServer } = require('ws');
const wss = new WebSocketServer({ host: '127.0.0.1', port: Number(process.argv[2] || 0), path: '/ws' });
wss.on('listening', () => console.error(`node ws: listening on 127.0.0.1:${wss.address().port}`));
wss.on('connection', (ws) => {
  ws.on('error', console.error);
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
});
