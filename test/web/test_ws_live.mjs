// Live: chat_server's WebSocket port spoken to by an independent client,
// Debian's node-ws (not our code), and by raw sockets where a client must
// break the rules. The pulsechat frames are web/protocol.js's. One server
// (CHAT_SERVER, --port 0 --ws-port 0, ports read back from its log) serves
// every test; each test has an upper time bound and no bare sleep.
//
// Run by meson (suite web, live) as `node test/web/test_ws_live.mjs`, not
// `node --test`, so that a missing node-ws or CHAT_SERVER exits 77 (skip).
// node-ws is looked for at $PULSECHAT_NODE_WS, then Debian's
// /usr/share/nodejs/ws/wrapper.mjs (apt-get install node-ws), then `ws` from npm.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import { createInterface } from 'node:readline';
import crypto from 'node:crypto';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { Decoder, Type, encodeFrame } from '../../web/protocol.js';

function skip(why) {
  console.log(`SKIP: ${why}`);
  process.exit(77);
}

const server = process.env.CHAT_SERVER;
if (!server || !existsSync(server)) skip('CHAT_SERVER is not set to a built chat_server');
const help = spawnSync(server, ['--help'], { encoding: 'utf8', timeout: 10_000 });
if (!String(help.stdout).includes('--ws-port')) skip(`${server} has no --ws-port (built before the WebSocket transport)`);

let WebSocket;
for (const where of [process.env.PULSECHAT_NODE_WS, '/usr/share/nodejs/ws/wrapper.mjs', 'ws']) {
  if (!where) continue;
  if (where.startsWith('/') && !existsSync(where)) continue;
  try {
    WebSocket = (await import(where)).default;
    break;
  } catch {
    // try the next
  }
}
if (!WebSocket) {
  skip('node-ws not found (Debian: apt-get install node-ws; or set PULSECHAT_NODE_WS to its wrapper.mjs)');
}

const limit = 10_000;  // ms: every wait below has this upper bound
const maxFrame = 4096;
const allowedOrigin = 'https://chat.example.org';

// Resolves with `promise`'s value, or rejects after `ms` saying what was awaited.
function within(promise, what, ms = limit) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms); }),
  ]).finally(() => clearTimeout(timer));
}

// --- the server ---

let child;
let tcpPort, wsPort;

async function startServer() {
  child = spawn(server, ['--bind', '127.0.0.1', '--port', '0', '--ws-port', '0', '--ws-allow-origin', allowedOrigin,
                         '--max-frame', String(maxFrame), '--rate', '0', '--log-level', 'info'],
                { stdio: ['ignore', 'pipe', 'pipe'] });
  const log = [];
  const ports = new Promise((resolve, reject) => {
    const seen = {};
    const onLine = (line) => {
      log.push(line);
      // "listening on 127.0.0.1:PORT" (TCP) and "listening on 127.0.0.1:PORT (websocket: ws://...)"
      const m = line.match(/listening on [^\s]+:(\d+)(?: \(([\w ]+))?/);
      if (m && m[2] === undefined) seen.tcp = Number(m[1]);
      if (m && m[2] === 'websocket') seen.ws = Number(m[1]);
      if (seen.tcp && seen.ws) resolve(seen);
    };
    createInterface({ input: child.stdout }).on('line', onLine);
    createInterface({ input: child.stderr }).on('line', onLine);
    child.on('exit', (code) => reject(new Error(`chat_server exited (${code}) before listening:\n${log.join('\n')}`)));
  });
  const p = await within(ports, 'chat_server to listen on TCP and WebSocket');
  tcpPort = p.tcp;
  wsPort = p.ws;
}

// --- clients ---

// Messages from the server, decoded as they come; `next(pred)` waits for one.
class Inbox {
  constructor() { this.decoder = new Decoder(); this.queue = []; this.waiters = []; }
  feed(bytes) {
    this.decoder.feed(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength));
    for (let m = this.decoder.next(); m; m = this.decoder.next()) this.push(m);
  }
  push(m) {
    const i = this.waiters.findIndex((w) => w.pred(m));
    if (i >= 0) this.waiters.splice(i, 1)[0].resolve(m);
    else this.queue.push(m);
  }
  next(pred, what) {
    const i = this.queue.findIndex(pred);
    if (i >= 0) return Promise.resolve(this.queue.splice(i, 1)[0]);
    return within(new Promise((resolve) => this.waiters.push({ pred, resolve })), what);
  }
}

const byType = (type, extra = () => true) => (m) => m.type === type && extra(m);
const frame = (m) => Buffer.from(encodeFrame(m));

class WsClient {
  static async open(nick) {
    const c = new WsClient();
    c.ws = new WebSocket(`ws://127.0.0.1:${wsPort}/ws`, 'pulsechat');
    c.ws.binaryType = 'nodebuffer';
    c.inbox = new Inbox();
    c.closed = new Promise((resolve) => c.ws.on('close', (code, reason) => resolve({ code, reason: String(reason) })));
    c.ws.on('message', (data, isBinary) => { if (isBinary) c.inbox.feed(data); });
    c.ws.on('error', () => {});  // the close event says what happened
    await within(new Promise((resolve, reject) => { c.ws.once('open', resolve); c.ws.once('error', reject); }),
                 'the WebSocket to open');
    assert.equal(c.ws.protocol, 'pulsechat');
    if (nick) {
      c.send(frame({ type: Type.HELLO, nick, token: '', resumeToken: '' }));
      c.welcome = await c.inbox.next(byType(Type.WELCOME), 'WELCOME');
    }
    return c;
  }
  send(bytes) { this.ws.send(bytes, { binary: true }); }
  async join(room) {
    this.send(frame({ type: Type.JOIN, room, resume: false }));
    return this.inbox.next(byType(Type.JOINED, (m) => m.room === room), `JOINED ${room}`);
  }
  close() { this.ws.terminate(); }
}

class TcpClient {
  static async open(nick) {
    const c = new TcpClient();
    c.inbox = new Inbox();
    c.socket = net.connect(tcpPort, '127.0.0.1');
    c.socket.on('data', (d) => c.inbox.feed(d));
    c.socket.on('error', () => {});
    await within(new Promise((resolve, reject) => { c.socket.once('connect', resolve); c.socket.once('error', reject); }),
                 'the TCP connection');
    c.socket.write(frame({ type: Type.HELLO, nick, token: '', resumeToken: '' }));
    c.welcome = await c.inbox.next(byType(Type.WELCOME), 'WELCOME over TCP');
    return c;
  }
  async join(room) {
    this.socket.write(frame({ type: Type.JOIN, room, resume: false }));
    return this.inbox.next(byType(Type.JOINED, (m) => m.room === room), `JOINED ${room} over TCP`);
  }
  close() { this.socket.destroy(); }
}

// A raw socket that has done the opening handshake itself: for what node-ws
// would never send. `received` collects every byte after the 101.
async function rawUpgrade(extraHeaders = '') {
  const socket = net.connect(wsPort, '127.0.0.1');
  socket.on('error', () => {});
  const key = crypto.randomBytes(16).toString('base64');
  socket.write(`GET /ws HTTP/1.1\r\nHost: 127.0.0.1:${wsPort}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
               `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: pulsechat\r\n` +
               `${extraHeaders}\r\n`);
  let buffer = Buffer.alloc(0);
  const ended = new Promise((resolve) => socket.on('close', resolve));
  const head = await within(new Promise((resolve) => {
    socket.on('data', (d) => {
      buffer = Buffer.concat([buffer, d]);
      const end = buffer.indexOf('\r\n\r\n');
      if (end >= 0 && resolve) {
        resolve(buffer.subarray(0, end).toString('latin1'));
        buffer = buffer.subarray(end + 4);
        resolve = null;
      }
    });
  }), 'the answer to the upgrade');
  return { socket, head, key, ended, rest: () => buffer };
}

// The first server frame in `bytes`: {opcode, payload} (server frames are unmasked).
function parseServerFrame(bytes) {
  if (bytes.length < 2) return null;
  let len = bytes[1] & 0x7f, at = 2;
  if (len === 126) { len = bytes.readUInt16BE(2); at = 4; } else if (len === 127) { len = Number(bytes.readBigUInt64BE(2)); at = 10; }
  if (bytes.length < at + len) return null;
  return { opcode: bytes[0] & 0x0f, payload: bytes.subarray(at, at + len), size: at + len };
}

// A raw HTTP request on the ws port; resolves with the whole answer once the server closes or it is complete.
function rawHttp(request) {
  return within(new Promise((resolve, reject) => {
    const socket = net.connect(wsPort, '127.0.0.1');
    let data = Buffer.alloc(0);
    const done = () => { socket.destroy(); resolve(data.toString('utf8')); };
    socket.on('data', (d) => {
      data = Buffer.concat([data, d]);
      const text = data.toString('latin1');
      const end = text.indexOf('\r\n\r\n');
      const length = /\r\ncontent-length: *(\d+)/i.exec(text);
      if (end >= 0 && length && data.length >= end + 4 + Number(length[1])) done();
    });
    socket.on('end', done);
    socket.on('error', reject);
    socket.write(request);
  }), 'an HTTP answer');
}

// --- the tests ---

describe('chat_server over WebSocket (live, node-ws)', () => {
  before(startServer);
  after(() => { child?.kill('SIGKILL'); });

  test('HELLO gets WELCOME, and a SAY reaches a second WebSocket client, a TCP client and the sender', async () => {
    const alice = await WsClient.open('ws_alice');
    const bob = await WsClient.open('ws_bob');
    const carol = await TcpClient.open('tcp_carol');
    assert.equal(alice.welcome.nick, 'ws_alice');
    assert.equal(alice.welcome.maxFrame, maxFrame);
    await alice.join('ws-room');
    await bob.join('ws-room');
    await carol.join('ws-room');
    alice.send(frame({ type: Type.SAY, room: 'ws-room', text: 'hello over websocket' }));
    const isIt = byType(Type.DELIVER, (m) => m.text === 'hello over websocket');
    for (const [who, c] of [['bob', bob], ['carol over TCP', carol], ['alice herself', alice]]) {
      const d = await c.inbox.next(isIt, `the DELIVER at ${who}`);
      assert.equal(d.sender, 'ws_alice');
      assert.equal(d.room, 'ws-room');
    }
    // And the other way: TCP into the WebSocket members.
    carol.socket.write(frame({ type: Type.SAY, room: 'ws-room', text: 'and back over tcp' }));
    const back = await bob.inbox.next(byType(Type.DELIVER, (m) => m.text === 'and back over tcp'), 'the TCP SAY at bob');
    assert.equal(back.sender, 'tcp_carol');
    for (const c of [alice, bob, carol]) c.close();
  });

  test('a pulsechat frame split over two messages, and two frames in one message, are read as frames', async () => {
    const sender = await WsClient.open('ws_split');
    const reader = await WsClient.open('ws_split_reader');
    await sender.join('split-room');
    await reader.join('split-room');
    const one = frame({ type: Type.SAY, room: 'split-room', text: 'one frame in two messages' });
    sender.send(one.subarray(0, 5));
    sender.send(one.subarray(5));
    sender.send(Buffer.concat([frame({ type: Type.SAY, room: 'split-room', text: 'first of two' }),
                               frame({ type: Type.SAY, room: 'split-room', text: 'second of two' })]));
    const texts = [];
    for (let i = 0; i < 3; i++) texts.push((await reader.inbox.next(byType(Type.DELIVER), 'a DELIVER')).text);
    assert.deepEqual(texts, ['one frame in two messages', 'first of two', 'second of two']);
    sender.close();
    reader.close();
  });

  test('a ping is answered with a pong carrying its payload', async () => {
    const c = await WsClient.open('ws_pinger');
    const pong = within(new Promise((resolve) => c.ws.once('pong', resolve)), 'the pong');
    c.ws.ping(Buffer.from('are you there'));
    assert.equal(String(await pong), 'are you there');
    c.close();
  });

  test('a text message is refused with close 1003', async () => {
    const c = await WsClient.open('ws_texter');
    c.ws.send('pulsechat is binary');
    const { code } = await within(c.closed, 'the close');
    assert.equal(code, 1003);
  });

  test('a message over --max-frame is refused with close 1009', async () => {
    const c = await WsClient.open('ws_big');
    c.send(Buffer.alloc(4 * maxFrame, 0x41));
    const { code } = await within(c.closed, 'the close');
    assert.equal(code, 1009);
  });

  test('an unmasked client frame is refused with close 1002', async () => {
    const raw = await rawUpgrade();
    assert.match(raw.head, /^HTTP\/1\.1 101 /);
    const hello = frame({ type: Type.HELLO, nick: 'raw_unmasked', token: '', resumeToken: '' });
    raw.socket.write(Buffer.concat([Buffer.from([0x82, hello.length]), hello]));  // mask bit clear
    await within(raw.ended, 'the server to close');
    // PROTOCOL.md 13: an ERROR malformed_frame ("websocket: ...") in a binary message, then the close.
    const frames = [];
    for (let bytes = raw.rest(), f = parseServerFrame(bytes); f; bytes = bytes.subarray(f.size), f = parseServerFrame(bytes))
      frames.push(f);
    assert.deepEqual(frames.map((f) => f.opcode), [0x2, 0x8], 'a binary message, then a close frame');
    const inbox = new Inbox();
    inbox.feed(frames[0].payload);
    const error = await inbox.next(byType(Type.ERROR), 'the ERROR');
    assert.equal(error.fatal, true);
    assert.match(error.reason, /^websocket:/);
    assert.equal(frames[1].payload.readUInt16BE(0), 1002);
  });

  test('a fatal pulsechat ERROR (a malformed frame) comes as an ERROR frame, then close 1008', async () => {
    const c = await WsClient.open('ws_malformed');
    c.send(Buffer.from([9, Type.SAY, 0, 0, 0, 0, 0, 0]));  // version 9
    const error = await c.inbox.next(byType(Type.ERROR), 'the ERROR frame');
    assert.equal(error.fatal, true);
    const { code, reason } = await within(c.closed, 'the close');
    assert.equal(code, 1008);
    assert.ok(reason.length > 0, 'the close says which ERROR');
  });

  test('an Origin not on --ws-allow-origin is refused with 403, one on it is let in', async () => {
    const refused = await rawUpgrade('Origin: https://evil.example\r\n');
    assert.match(refused.head, /^HTTP\/1\.1 403 /);
    refused.socket.destroy();
    const allowed = await rawUpgrade(`Origin: ${allowedOrigin}\r\n`);
    assert.match(allowed.head, /^HTTP\/1\.1 101 /);
    allowed.socket.destroy();
  });

  test('a plain GET / is the page: 200, text/html, a Content-Security-Policy', async () => {
    const answer = await rawHttp(`GET / HTTP/1.1\r\nHost: 127.0.0.1:${wsPort}\r\nConnection: close\r\n\r\n`);
    const head = answer.slice(0, answer.indexOf('\r\n\r\n'));
    assert.match(head, /^HTTP\/1\.1 200 /);
    assert.match(head, /\r\ncontent-type: *text\/html/i);
    assert.match(head, /\r\ncontent-security-policy: *\S/i);
  });
});
