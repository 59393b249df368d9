// web/session.js under node, without a browser: a fake WebSocket and fake
// timers drive the session through login, requests one at a time, heartbeats,
// a silent server, the reconnect with resume, and the commands' wording.
// Run by meson (suite web): node --test test/web/test_session.mjs
import assert from 'node:assert/strict';
import { beforeEach, afterEach, mock, test } from 'node:test';

import { Decoder, MISSED_UNKNOWN, Type, encodeFrame } from '../../web/protocol.js';
import { Backoff, Session, joinedText, parseCommand, presenceText } from '../../web/session.js';

let clock = 0;
const advance = (ms) => { clock += ms; mock.timers.tick(ms); };

// A WebSocket the test plays the server for.
class FakeSocket {
  static all = [];
  constructor(url, protocol) {
    this.url = url; this.offered = protocol; this.protocol = ''; this.readyState = 0;
    this.sent = []; this.decoder = new Decoder(1 << 20);
    FakeSocket.all.push(this);
  }
  get last() { return this.sent[this.sent.length - 1]; }
  send(bytes) {
    this.decoder.feed(bytes);
    for (let m = this.decoder.next(); m; m = this.decoder.next()) this.sent.push(m);
  }
  close() { this.readyState = 3; }
  // --- the server's side ---
  open() { this.protocol = this.offered; this.readyState = 1; this.onopen?.(); }
  deliver(...frames) {
    const parts = frames.map((f) => encodeFrame(f));
    const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) { all.set(p, at); at += p.length; }
    this.onmessage?.({ data: all.buffer });
  }
  fail(code = 1006) { this.readyState = 3; this.onclose?.({ code, reason: '' }); }
}

const welcome = (extra = {}) => ({ type: Type.WELCOME, sessionId: 1n, heartbeatIntervalMs: 1000, heartbeatTimeoutMs: 3000,
  maxFrame: 65536, nick: 'alice', resumeToken: 'tok1', serverName: 'test', serverVersion: '0', ...extra });
const joined = (room, extra = {}) => ({ type: Type.JOINED, room, epoch: 7n, headSeq: 0n, missed: 0n, historyCount: 0,
  epochChanged: false, members: ['alice'], quiet: false, ...extra });
const deliver = (room, seq, text, extra = {}) => ({ type: Type.DELIVER, room, sender: 'bob', timestampMs: 1n,
  position: { epoch: 7n, seq: BigInt(seq) }, text, history: false, ...extra });

function start(rooms = ['lobby']) {
  const events = [];
  const view = new Proxy({}, { get: (_, name) => (...args) => events.push([name, ...args]) });
  const s = new Session({ url: 'ws://x/ws', nick: 'alice', rooms, view, WebSocketImpl: FakeSocket, now: () => clock });
  s.start();
  return { s, events, ws: () => FakeSocket.all[FakeSocket.all.length - 1], statuses: () => events.filter((e) => e[0] === 'status').map((e) => e[1]) };
}

beforeEach(() => { clock = 1_000_000; FakeSocket.all = []; mock.timers.enable({ apis: ['setTimeout', 'setInterval'] }); });
afterEach(() => mock.timers.reset());

test('offers the pulsechat subprotocol, says HELLO, then joins its rooms one at a time', () => {
  const { s, ws } = start(['lobby', 'dev']);
  assert.equal(ws().offered, 'pulsechat');
  ws().open();
  assert.deepEqual(ws().sent.map((m) => m.name), ['HELLO']);
  assert.equal(ws().sent[0].nick, 'alice');
  ws().deliver(welcome());
  assert.deepEqual(ws().sent.map((m) => m.name), ['HELLO', 'JOIN']);
  assert.equal(ws().last.room, 'lobby');
  ws().deliver(joined('lobby'));
  assert.equal(ws().last.room, 'dev');
  ws().deliver(joined('dev'));
  s.input('hello there');
  assert.deepEqual([ws().last.name, ws().last.room, ws().last.text], ['SAY', 'lobby', 'hello there']);
  s.input('second');  // waits for the first to come back
  assert.equal(ws().last.text, 'hello there');
  ws().deliver(deliver('lobby', 1, 'hello there', { sender: 'alice' }));
  assert.equal(ws().last.text, 'second');
});

test('sends HEARTBEAT after one quiet interval and answers PING with its nonce', () => {
  const { ws } = start();
  ws().open();
  ws().deliver(welcome(), joined('lobby'));
  const before = ws().sent.length;
  advance(999);
  assert.equal(ws().sent.length, before);
  advance(2);
  assert.equal(ws().last.name, 'HEARTBEAT');
  ws().deliver({ type: Type.PING, nonce: 42n });
  assert.deepEqual([ws().last.name, ws().last.nonce], ['PONG', 42n]);
});

test('a silent server is "not responding" after its timeout; the reconnect resumes the session and each room', () => {
  const { s, ws, statuses } = start(['lobby']);
  const first = ws();
  first.open();
  first.deliver(welcome(), joined('lobby', { headSeq: 4n }), deliver('lobby', 5, 'five'));
  // Frames keep it alive...
  advance(2500);
  first.deliver({ type: Type.PING, nonce: 1n });
  advance(2500);
  assert.ok(!statuses().some((st) => st.state === 'timeout'));
  // ...silence for the timeout does not.
  advance(600);
  const timeout = statuses().find((st) => st.state === 'timeout');
  assert.ok(timeout, 'reported');
  assert.match(timeout.text, /^server not responding: nothing received for 3\.\ds \(timeout 3\.0s\); closing$/);
  assert.equal(first.readyState, 3, 'the old socket is closed');
  const waiting = statuses().at(-1);
  assert.equal(waiting.state, 'reconnecting');
  assert.match(waiting.text, /^server not responding; reconnecting in 1s \(attempt 1\)/);
  s.input('said while away');
  advance(waiting.delay);
  const second = ws();
  assert.notEqual(second, first);
  second.open();
  assert.equal(second.last.resumeToken, 'tok1', 'HELLO resumes the session');
  second.deliver(welcome({ resumeToken: 'tok2' }));
  assert.equal(statuses().at(-1).state, 'connected');
  assert.equal(statuses().at(-1).reconnect, true);
  const join = second.last;
  assert.deepEqual([join.name, join.room, join.resume, join.after], ['JOIN', 'lobby', true, { epoch: 7n, seq: 5n }]);
  second.deliver(joined('lobby', { headSeq: 6n, historyCount: 1 }), deliver('lobby', 6, 'six', { history: true }));
  assert.deepEqual([second.last.name, second.last.text], ['SAY', 'said while away'], 'what was typed meanwhile goes out after the rejoin');
});

test('a SAY whose fate the lost connection hid is sent again unless the rejoin history shows it', () => {
  for (const arrived of [false, true]) {
    FakeSocket.all = [];
    const { s, ws, events } = start();
    ws().open();
    ws().deliver(welcome(), joined('lobby', { headSeq: 1n }));
    s.input('maybe lost');
    ws().fail();
    advance(1000);
    ws().open();
    ws().deliver(welcome());
    const history = arrived ? [deliver('lobby', 2, 'maybe lost', { sender: 'alice', history: true })] : [];
    ws().deliver(joined('lobby', { headSeq: arrived ? 2n : 1n, historyCount: history.length }), ...history);
    const says = ws().sent.filter((m) => m.name === 'SAY');
    assert.equal(says.length, arrived ? 0 : 1, arrived ? 'not again' : 'again');
    assert.equal(events.some((e) => e[0] === 'notice' && /sending again/.test(e[1])), !arrived, JSON.stringify(events.filter((e) => e[0] !== 'status'), (k, v) => typeof v === 'bigint' ? String(v) : v));
  }
});

test('a connection that never opened is refused without retrying; nick_taken at login is final', () => {
  let t = start();
  t.ws().fail();
  // (connectFailed is async: it looks whether the page's own server is up.)
  return new Promise((r) => setImmediate(r)).then(() => {
    assert.equal(t.statuses().at(-1).state, 'refused');
    assert.match(t.statuses().at(-1).text, /^cannot connect to ws:\/\/x\/ws: the connection failed/);
    advance(60000);
    assert.equal(FakeSocket.all.length, 1, 'no retry');
    t = start();
    t.ws().open();
    t.ws().deliver({ type: Type.ERROR, code: 10, reason: 'nick "alice" is taken', fatal: true });
    assert.deepEqual([t.statuses().at(-1).state, t.statuses().at(-1).text], ['refused', 'disconnected: nick_taken: nick "alice" is taken']);
  });
});

test('a message over the server\'s max_frame is refused before it is sent', () => {
  const { s, ws, events } = start();
  ws().open();
  ws().deliver(welcome({ maxFrame: 100 }), joined('lobby'));
  const before = ws().sent.length;
  s.input('x'.repeat(200));
  assert.equal(ws().sent.length, before);
  assert.match(events.at(-1)[1], /^that message is too long: \d+ bytes, the server takes at most 100 \(nothing was sent\)$/);
  s.input('x'.repeat(80));
  assert.equal(ws().last.name, 'SAY');
});

test('rate_limited: the same request goes again after a pause', () => {
  const { s, ws } = start();
  ws().open();
  ws().deliver(welcome(), joined('lobby'));
  s.input('fast');
  ws().deliver({ type: Type.ERROR, code: 17, reason: 'slow down', fatal: false });
  const count = () => ws().sent.filter((m) => m.name === 'SAY').length;
  assert.equal(count(), 1);
  advance(101);
  assert.equal(count(), 2);
});

test('commands and their errors are worded as chat_client words them', () => {
  assert.deepEqual(parseCommand('hi'), { kind: 'say', text: 'hi' });
  assert.deepEqual(parseCommand('//join x'), { kind: 'say', text: '/join x' });
  assert.deepEqual(parseCommand('/join   dev  '), { kind: 'join', room: 'dev' });
  assert.deepEqual(parseCommand('  /join dev'), { kind: 'say', text: '  /join dev' }, 'as chat_client: only a line starting with / is a command');
  assert.deepEqual(parseCommand('/leave'), { kind: 'leave', room: null });
  assert.deepEqual(parseCommand('/list'), { kind: 'rooms' });
  assert.deepEqual(parseCommand('/msg bob hi there'), { kind: 'msg', nick: 'bob', text: 'hi there' });
  assert.deepEqual(parseCommand('/exit'), { kind: 'quit' });
  assert.deepEqual(parseCommand('   '), { kind: 'empty' });
  assert.equal(parseCommand('/join').message, 'usage: /join ROOM');
  assert.equal(parseCommand('/msg bob').message, 'usage: /msg NICK TEXT');
  assert.equal(parseCommand('/nick -x').message, "'-x' is not a nickname: 1-32 letters, digits, '_', '-', '.', starting with a letter or digit");
  assert.equal(parseCommand('/frob').message, "unknown command '/frob' (nothing was sent); /help lists the commands, '//text' says a line starting with '/'");
  assert.equal(parseCommand('a\u0007b').message, 'a message must be valid UTF-8 without control characters');
});

test('JOINED and PRESENCE are told as chat_client tells them', () => {
  const j = (extra) => ({ room: 'lobby', missed: 0n, historyCount: 0, epochChanged: false, quiet: false, members: ['bob', 'alice'], ...extra });
  assert.equal(joinedText(j(), false), 'joined; here: bob, alice');
  assert.equal(joinedText(j(), true), 'rejoined; nothing was said while you were away');
  assert.equal(joinedText(j({ missed: 3n, historyCount: 2 }), true),
    'rejoined; you missed 3 messages the server no longer holds; 2 messages from while you were away follow');
  assert.equal(joinedText(j({ missed: MISSED_UNKNOWN }), true),
    'rejoined; you missed messages the server no longer holds (it cannot tell how many)');
  assert.equal(joinedText(j({ epochChanged: true, historyCount: 1 }), true),
    'rejoined; the room was started anew while you were away, so messages sent before that are lost; 1 message from while you were away follow');
  assert.equal(presenceText({ nick: 'bob', event: 'timed_out', detail: '' }, 'alice'), 'bob timed out');
  assert.equal(presenceText({ nick: 'bob', event: 'renamed', detail: 'rob' }, 'alice'), 'bob is now known as rob');
  assert.equal(presenceText({ nick: 'alice', event: 'left', detail: '' }, 'alice'), 'you left');
});

test('backoff: doubling with equal jitter, capped, reset', () => {
  const b = new Backoff(200, 1000, () => 0.999999);
  assert.deepEqual([b.next(), b.next(), b.next(), b.next()], [200, 400, 800, 1000]);
  const low = new Backoff(200, 1000, () => 0);
  assert.deepEqual([low.next(), low.next()], [100, 200]);
  b.reset();
  assert.equal(b.next(), 200);
  assert.equal(b.attempts, 1);
});
