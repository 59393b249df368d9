// The pulsechat wire protocol (docs/PROTOCOL.md) in the browser: frames to
// bytes and bytes to frames, checked as strictly as the server's decoder.
// Plain ES module, no dependencies; u64 fields are BigInt.

export const VERSION = 1;
export const HEADER_SIZE = 8;
export const DEFAULT_MAX_FRAME = 65536;
export const MAX_FRAME_OVERHEAD = 1024;
export const MISSED_UNKNOWN = 0xFFFFFFFFFFFFFFFFn;

export const Type = Object.freeze({
  HELLO: 0x01, WELCOME: 0x02, JOIN: 0x03, JOINED: 0x04, LEAVE: 0x05, SAY: 0x06,
  DELIVER: 0x07, WHISPER: 0x08, PRESENCE: 0x09, NICK: 0x0A, LIST: 0x0B, ROOMS: 0x0C,
  WHO: 0x0D, MEMBERS: 0x0E, HEARTBEAT: 0x0F, PING: 0x10, PONG: 0x11, ERROR: 0x12, BYE: 0x13,
});
const typeNames = Object.fromEntries(Object.entries(Type).map(([k, v]) => [v, k]));

export const PresenceEvent = Object.freeze({ joined: 1, left: 2, timed_out: 3, disconnected: 4, renamed: 5 });
const presenceNames = Object.fromEntries(Object.entries(PresenceEvent).map(([k, v]) => [v, k]));

// Section 9.1; codes this version does not know are shown as "unknown".
export const ErrorCode = Object.freeze({
  1: 'malformed_frame', 2: 'unsupported_version', 3: 'unknown_type', 4: 'frame_too_large',
  5: 'invalid_utf8', 6: 'handshake_timeout', 7: 'hello_required', 8: 'duplicate_hello',
  9: 'invalid_nick', 10: 'nick_taken', 11: 'auth_failed', 12: 'invalid_room', 13: 'not_in_room',
  14: 'too_many_rooms', 15: 'no_such_nick', 16: 'invalid_text', 17: 'rate_limited',
  18: 'slow_consumer', 19: 'heartbeat_timeout', 20: 'server_full',
  21: 'too_many_connections_from_address', 22: 'replaced', 23: 'shutting_down', 24: 'internal',
  25: 'unavailable', 26: 'messages_missed',
});
export function errorName(code) { return ErrorCode[code] ?? 'unknown'; }

// Why bytes could not be decoded (the names of chat::DecodeError).
export class DecodeError extends Error {
  constructor(kind, detail = '') {
    super(detail ? `${kind}: ${detail}` : kind);
    this.kind = kind;
  }
}

const encoder = new TextEncoder();
// WHATWG's fatal UTF-8 decoder refuses exactly what Unicode's table 3-7 does:
// overlong forms, surrogates, code points over U+10FFFF, truncated sequences.
const strictDecoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

export function isValidUtf8(bytes) {
  try { strictDecoder.decode(bytes); return true; } catch { return false; }
}
export function isValidNick(s) { return /^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$/.test(s); }
export function isValidRoom(s) { return /^[A-Za-z0-9#][A-Za-z0-9_.#-]{0,63}$/.test(s); }
// Section 4: non-empty, no control characters but tab.
export function isValidText(s) {
  return s.length > 0 && !/[\u0000-\u0008\u000A-\u001F\u007F-\u009F]/.test(s);
}

// --- encoding ---------------------------------------------------------------------

class Writer {
  constructor() { this.parts = []; this.size = 0; }
  bytes(b) { this.parts.push(b); this.size += b.length; }
  u8(v) { this.bytes(Uint8Array.of(v & 0xFF)); }
  u16(v) { const b = new Uint8Array(2); new DataView(b.buffer).setUint16(0, v); this.bytes(b); }
  u32(v) { const b = new Uint8Array(4); new DataView(b.buffer).setUint32(0, v); this.bytes(b); }
  u64(v) { const b = new Uint8Array(8); new DataView(b.buffer).setBigUint64(0, BigInt(v)); this.bytes(b); }
  str16(s) {
    const b = encoder.encode(s ?? '');
    if (b.length > 0xFFFF) throw new RangeError('a str16 over 65535 bytes');
    this.u16(b.length); this.bytes(b);
  }
  str32(s) { const b = encoder.encode(s ?? ''); this.u32(b.length); this.bytes(b); }
  position(p) { this.u64(p.epoch); this.u64(p.seq); }
  list(items, each) {
    if (items.length > 0xFFFF) throw new RangeError('a list over 65535 items');
    this.u16(items.length); for (const item of items) each(item);
  }
  take() {
    const out = new Uint8Array(this.size);
    let at = 0;
    for (const p of this.parts) { out.set(p, at); at += p.length; }
    return out;
  }
}

// One frame, header and payload. `m.type` is a Type code; the other fields
// are those of PROTOCOL.md section 6 in camelCase.
export function encodeFrame(m) {
  const w = new Writer();
  let flags = 0;
  switch (m.type) {
    case Type.HELLO: w.str16(m.nick); w.str16(m.token); w.str16(m.resumeToken); break;
    case Type.WELCOME:
      w.u64(m.sessionId); w.u32(m.heartbeatIntervalMs); w.u32(m.heartbeatTimeoutMs); w.u32(m.maxFrame);
      w.str16(m.nick); w.str16(m.resumeToken); w.str16(m.serverName); w.str16(m.serverVersion); break;
    case Type.JOIN:
      w.str16(m.room); w.u8(m.resume ? 1 : 0); if (m.resume) w.position(m.after); break;
    case Type.JOINED:
      w.str16(m.room); w.u64(m.epoch); w.u64(m.headSeq); w.u64(m.missed); w.u32(m.historyCount);
      w.u8(m.epochChanged ? 1 : 0); w.list(m.members, (n) => w.str16(n)); if (m.quiet) flags = 1; break;
    case Type.LEAVE: case Type.WHO: w.str16(m.room); break;
    case Type.SAY: w.str16(m.room); w.str32(m.text); break;
    case Type.DELIVER:
      w.str16(m.room); w.str16(m.sender); w.u64(m.timestampMs); w.position(m.position); w.str32(m.text);
      if (m.history) flags = 1; break;
    case Type.WHISPER: w.str16(m.peer); w.u64(m.timestampMs ?? 0n); w.str32(m.text); if (m.echo) flags = 1; break;
    case Type.PRESENCE: w.str16(m.room); w.str16(m.nick); w.u8(PresenceEvent[m.event] ?? m.event); w.str16(m.detail); break;
    case Type.NICK: w.str16(m.oldNick); w.str16(m.newNick); break;
    case Type.LIST: case Type.HEARTBEAT: break;
    case Type.ROOMS: w.list(m.rooms, (r) => { w.str16(r.name); w.u32(r.members); }); break;
    case Type.MEMBERS: w.str16(m.room); w.list(m.nicks, (n) => w.str16(n)); break;
    case Type.PING: case Type.PONG: w.u64(m.nonce); break;
    case Type.ERROR: w.u16(m.code); w.str16(m.reason); if (m.fatal) flags = 1; break;
    case Type.BYE: w.str16(m.reason); break;
    default: throw new RangeError(`no frame type ${m.type}`);
  }
  const payload = w.take();
  const frame = new Uint8Array(HEADER_SIZE + payload.length);
  const view = new DataView(frame.buffer);
  view.setUint8(0, VERSION); view.setUint8(1, m.type); view.setUint16(2, flags); view.setUint32(4, payload.length);
  frame.set(payload, HEADER_SIZE);
  return frame;
}

// --- decoding ---------------------------------------------------------------------

class Reader {
  constructor(bytes) { this.b = bytes; this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength); this.at = 0; }
  need(n) { if (this.at + n > this.b.length) throw new DecodeError('truncated_field'); }
  u8() { this.need(1); return this.view.getUint8(this.at++); }
  u16() { this.need(2); const v = this.view.getUint16(this.at); this.at += 2; return v; }
  u32() { this.need(4); const v = this.view.getUint32(this.at); this.at += 4; return v; }
  u64() { this.need(8); const v = this.view.getBigUint64(this.at); this.at += 8; return v; }
  bool8() { const v = this.u8(); if (v > 1) throw new DecodeError('invalid_value', 'bool8'); return v === 1; }
  str(n) {
    this.need(n);
    const s = this.b.subarray(this.at, this.at + n);
    this.at += n;
    try { return strictDecoder.decode(s); } catch { throw new DecodeError('invalid_utf8'); }
  }
  str16() { return this.str(this.u16()); }
  str32() { return this.str(this.u32()); }
  position() { return { epoch: this.u64(), seq: this.u64() }; }
  list(minItemSize, each) {
    const n = this.u16();
    // A count the rest could not hold is refused before any item is read.
    if (n * minItemSize > this.b.length - this.at) throw new DecodeError('truncated_field', 'list count');
    const out = [];
    for (let i = 0; i < n; i++) out.push(each());
    return out;
  }
  end() { if (this.at !== this.b.length) throw new DecodeError('trailing_bytes'); }
}

// A frame's payload into a message ({type, name, ...fields}).
export function decodePayload(type, flags, payload) {
  const r = new Reader(payload);
  const bit0 = (flags & 1) === 1;
  let m;
  switch (type) {
    case Type.HELLO: m = { nick: r.str16(), token: r.str16(), resumeToken: r.str16() }; break;
    case Type.WELCOME:
      m = { sessionId: r.u64(), heartbeatIntervalMs: r.u32(), heartbeatTimeoutMs: r.u32(), maxFrame: r.u32(),
            nick: r.str16(), resumeToken: r.str16(), serverName: r.str16(), serverVersion: r.str16() }; break;
    case Type.JOIN: { const room = r.str16(); const resume = r.bool8(); m = { room, resume, after: resume ? r.position() : null }; break; }
    case Type.JOINED:
      m = { room: r.str16(), epoch: r.u64(), headSeq: r.u64(), missed: r.u64(), historyCount: r.u32(),
            epochChanged: r.bool8(), members: r.list(2, () => r.str16()), quiet: bit0 }; break;
    case Type.LEAVE: case Type.WHO: m = { room: r.str16() }; break;
    case Type.SAY: m = { room: r.str16(), text: r.str32() }; break;
    case Type.DELIVER:
      m = { room: r.str16(), sender: r.str16(), timestampMs: r.u64(), position: r.position(), text: r.str32(), history: bit0 }; break;
    case Type.WHISPER: m = { peer: r.str16(), timestampMs: r.u64(), text: r.str32(), echo: bit0 }; break;
    case Type.PRESENCE: {
      const room = r.str16(), nick = r.str16(), code = r.u8();
      if (!presenceNames[code]) throw new DecodeError('invalid_value', 'presence event');
      m = { room, nick, event: presenceNames[code], detail: r.str16() }; break;
    }
    case Type.NICK: m = { oldNick: r.str16(), newNick: r.str16() }; break;
    case Type.LIST: case Type.HEARTBEAT: m = {}; break;
    case Type.ROOMS: m = { rooms: r.list(6, () => ({ name: r.str16(), members: r.u32() })) }; break;
    case Type.MEMBERS: m = { room: r.str16(), nicks: r.list(2, () => r.str16()) }; break;
    case Type.PING: case Type.PONG: m = { nonce: r.u64() }; break;
    case Type.ERROR: {
      const code = r.u16();
      if (code === 0) throw new DecodeError('invalid_value', 'error code 0');
      m = { code, codeName: errorName(code), reason: r.str16(), fatal: bit0 }; break;
    }
    case Type.BYE: m = { reason: r.str16() }; break;
    default: throw new DecodeError('unknown_type', String(type));
  }
  r.end();
  return { type, name: typeNames[type], ...m };
}

// Bytes in, whole messages out, as they arrive (a WebSocket message may hold
// several frames). Errors are final, as on the server.
export class Decoder {
  constructor(maxPayload = DEFAULT_MAX_FRAME + MAX_FRAME_OVERHEAD) {
    this.maxPayload = maxPayload;
    this.buffer = new Uint8Array(0);
    this.error = null;
  }
  feed(bytes) {
    if (this.error) return;
    const joined = new Uint8Array(this.buffer.length + bytes.length);
    joined.set(this.buffer); joined.set(bytes, this.buffer.length);
    this.buffer = joined;
  }
  // The next message, or null when more bytes are needed; throws DecodeError.
  next() {
    if (this.error) throw this.error;
    try {
      const b = this.buffer;
      if (b.length === 0) return null;
      if (b[0] !== VERSION) throw new DecodeError('unsupported_version', String(b[0]));
      if (b.length < HEADER_SIZE) return null;
      const view = new DataView(b.buffer, b.byteOffset, b.byteLength);
      const type = view.getUint8(1), flags = view.getUint16(2), length = view.getUint32(4);
      if (length > this.maxPayload) throw new DecodeError('frame_too_large', `${length} bytes`);
      if (!typeNames[type]) throw new DecodeError('unknown_type', String(type));
      if (b.length < HEADER_SIZE + length) return null;
      const payload = b.slice(HEADER_SIZE, HEADER_SIZE + length);
      this.buffer = b.slice(HEADER_SIZE + length);
      return decodePayload(type, flags, payload);
    } catch (e) {
      if (e instanceof DecodeError) { this.error = e; this.buffer = new Uint8Array(0); }
      throw e;
    }
  }
}
