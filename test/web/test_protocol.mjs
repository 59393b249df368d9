// web/protocol.js under node: PROTOCOL.md's worked examples byte for byte
// (read from the document itself, so the two cannot drift apart), every
// frame type both ways, and every decode error the server's decoder knows.
// Run by meson (suite web): node test/web/test_protocol.mjs
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';

import {
  Decoder, DecodeError, MISSED_UNKNOWN, Type, decodePayload, encodeFrame, errorName, isValidNick, isValidRoom,
  isValidText, isValidUtf8,
} from '../../web/protocol.js';

const root = process.env.PULSECHAT_SOURCE_DIR ?? join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const protocolMd = readFileSync(join(root, 'docs', 'PROTOCOL.md'), 'utf8');

// The bytes of the code block under a heading of section 12: the hex pairs at
// the start of each line (before the explanation).
function exampleBytes(heading, which = 0) {
  const start = protocolMd.indexOf(heading);
  assert.ok(start >= 0, `PROTOCOL.md has "${heading}"`);
  const blocks = protocolMd.slice(start).split('```');
  const block = blocks[1 + 2 * which];
  const bytes = [];
  for (const line of block.split('\n')) {
    const hex = line.match(/^((?:[0-9a-f]{2} )*[0-9a-f]{2})(?:\s{2,}|$)/);
    if (hex) bytes.push(...hex[1].split(' ').map((h) => parseInt(h, 16)));
  }
  return Uint8Array.from(bytes);
}

function decodeAll(bytes, max) {
  const d = new Decoder(max);
  d.feed(bytes);
  const out = [];
  for (let m = d.next(); m; m = d.next()) out.push(m);
  return out;
}

const enc = new TextEncoder();

test('12.1 SAY: "héllo" in lobby encodes to the documented 25 bytes', () => {
  const documented = exampleBytes('### 12.1 SAY');
  assert.equal(documented.length, 25);
  assert.deepEqual(encodeFrame({ type: Type.SAY, room: 'lobby', text: 'héllo' }), documented);
  const [m] = decodeAll(documented);
  assert.equal(m.name, 'SAY');
  assert.equal(m.text, 'héllo');
});

test('12.2 DELIVER: the documented 54 bytes decode to the message and back', () => {
  const documented = exampleBytes('### 12.2 DELIVER');
  assert.equal(documented.length, 54);
  const [m] = decodeAll(documented);
  assert.deepEqual(
    { room: m.room, sender: m.sender, ts: m.timestampMs, pos: m.position, text: m.text, history: m.history },
    { room: 'lobby', sender: 'ada', ts: 1700000000000n, pos: { epoch: 3n, seq: 42n }, text: 'héllo', history: false });
  assert.deepEqual(encodeFrame(m), documented);
  const replayed = encodeFrame({ ...m, history: true });
  assert.equal(replayed[3], 1);  // flags 00 01 for a history replay
  assert.equal(decodeAll(replayed)[0].history, true);
});

test('12.3 ERROR and BYE: fatal unsupported_version "v1", and BYE "bye"', () => {
  const documented = exampleBytes('### 12.3 ERROR and BYE');
  const [error, bye] = decodeAll(documented);
  assert.equal(error.name, 'ERROR');
  assert.equal(error.code, 2);
  assert.equal(error.codeName, 'unsupported_version');
  assert.equal(error.fatal, true);
  assert.equal(error.reason, 'v1');
  assert.equal(bye.reason, 'bye');
  const again = new Uint8Array([...encodeFrame(error), ...encodeFrame(bye)]);
  assert.deepEqual(again, documented);
});

test('every frame type survives encode and decode', () => {
  const samples = [
    { type: Type.HELLO, nick: 'ada', token: 't0k', resumeToken: '' },
    { type: Type.WELCOME, sessionId: 7n, heartbeatIntervalMs: 5000, heartbeatTimeoutMs: 15000, maxFrame: 65536,
      nick: 'ada', resumeToken: 'r', serverName: 'pulsechat', serverVersion: '0.1.0' },
    { type: Type.JOIN, room: 'lobby', resume: false, after: null },
    { type: Type.JOIN, room: '#dev', resume: true, after: { epoch: 3n, seq: 9n } },
    { type: Type.JOINED, room: 'lobby', epoch: 3n, headSeq: 42n, missed: MISSED_UNKNOWN, historyCount: 2,
      epochChanged: false, members: ['bob', 'ada'], quiet: true },
    { type: Type.LEAVE, room: 'lobby' },
    { type: Type.WHISPER, peer: 'bob', timestampMs: 5n, text: 'psst', echo: true },
    { type: Type.PRESENCE, room: 'lobby', nick: 'bob', event: 'renamed', detail: 'rob' },
    { type: Type.NICK, oldNick: 'ada', newNick: 'ada2' },
    { type: Type.LIST },
    { type: Type.ROOMS, rooms: [{ name: 'lobby', members: 3 }, { name: '#dev', members: 1 }] },
    { type: Type.WHO, room: 'lobby' },
    { type: Type.MEMBERS, room: 'lobby', nicks: ['ada', 'bob'] },
    { type: Type.HEARTBEAT },
    { type: Type.PING, nonce: 0xFFFFFFFFFFFFFFFFn },
    { type: Type.PONG, nonce: 1n },
    { type: Type.ERROR, code: 99, reason: 'new', fatal: false },
    { type: Type.BYE, reason: 'quit' },
  ];
  const stream = [];
  for (const s of samples) stream.push(...encodeFrame(s));
  // Fed a byte at a time, the same messages come out.
  const d = new Decoder();
  const out = [];
  for (const b of stream) {
    d.feed(Uint8Array.of(b));
    for (let m = d.next(); m; m = d.next()) out.push(m);
  }
  assert.equal(out.length, samples.length);
  samples.forEach((s, i) => {
    for (const [k, v] of Object.entries(s)) assert.deepEqual(out[i][k], v, `${out[i].name}.${k}`);
  });
  assert.equal(out[16].codeName, 'unknown');
  assert.equal(errorName(25), 'unavailable');
});

test('decode errors: each kind, final for the stream', () => {
  const say = encodeFrame({ type: Type.SAY, room: 'lobby', text: 'hi' });
  const cases = [
    ['unsupported_version', Uint8Array.of(2, 6, 0, 0, 0, 0, 0, 0)],
    ['frame_too_large', Uint8Array.of(1, 6, 0, 0, 0, 0, 0x10, 1)],  // 4097 > 4096
    ['unknown_type', Uint8Array.of(1, 0x14, 0, 0, 0, 0, 0, 0)],
    ['truncated_field', Uint8Array.of(1, 0x03, 0, 0, 0, 0, 0, 3, 0, 5, 0x61)],
    ['trailing_bytes', Uint8Array.of(1, 0x0B, 0, 0, 0, 0, 0, 1, 0)],
    ['invalid_value', Uint8Array.of(1, 0x03, 0, 0, 0, 0, 0, 4, 0, 1, 0x61, 2)],                 // JOIN resume = 2
    ['invalid_value', Uint8Array.of(1, 0x12, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0)],                    // ERROR code 0
    ['invalid_value', Uint8Array.of(1, 0x09, 0, 0, 0, 0, 0, 9, 0, 1, 0x61, 0, 1, 0x62, 6, 0, 0)], // presence 6
    ['invalid_utf8', Uint8Array.of(1, 0x05, 0, 0, 0, 0, 0, 4, 0, 2, 0xC3, 0x28)],
    ['invalid_utf8', Uint8Array.of(1, 0x05, 0, 0, 0, 0, 0, 5, 0, 3, 0xED, 0xA0, 0x80)],           // a surrogate
    ['truncated_field', Uint8Array.of(1, 0x0E, 0, 0, 0, 0, 0, 5, 0, 1, 0x61, 0xFF, 0xFF)],        // a count that cannot fit
  ];
  for (const [kind, bytes] of cases) {
    const d = new Decoder(4096);
    d.feed(bytes);
    assert.throws(() => d.next(), (e) => e instanceof DecodeError && e.kind === kind, kind);
    d.feed(say);
    assert.throws(() => d.next(), (e) => e.kind === kind, 'errors are final');
  }
  assert.throws(() => decodePayload(Type.SAY, 0, Uint8Array.of(0, 1)), (e) => e.kind === 'truncated_field');
});

test('name and text rules of section 4', () => {
  assert.ok(isValidNick('ada') && isValidNick('a.b-c_9') && isValidNick('x'.repeat(32)));
  assert.ok(!isValidNick('') && !isValidNick('_ada') && !isValidNick('x'.repeat(33)) && !isValidNick('a b'));
  assert.ok(isValidRoom('#dev') && isValidRoom('lobby') && !isValidRoom('-x') && !isValidRoom('x'.repeat(65)));
  assert.ok(isValidText('héllo\tthere') && !isValidText('') && !isValidText('a\nb') && !isValidText('\u0085'));
  assert.ok(isValidUtf8(enc.encode('日本')) && !isValidUtf8(Uint8Array.of(0xC0, 0x80)));
});
