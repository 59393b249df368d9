// The web client's connection and state, without the DOM: what
// src/client/client_state.cpp, command.cpp, backoff.cpp and connection.hpp do
// for chat_client, over one WebSocket (subprotocol "pulsechat", binary
// messages that each hold whole frames, docs/PROTOCOL.md).
//
// The session tells its view what happened through callbacks (see `View`
// below); the view never touches the socket. Requests go out one at a time,
// as chat_client sends them, so that a non-fatal ERROR can be matched to the
// request it answers (PROTOCOL.md section 5, step 4).

import {
  DEFAULT_MAX_FRAME, Decoder, DecodeError, HEADER_SIZE, MAX_FRAME_OVERHEAD, MISSED_UNKNOWN, Type, encodeFrame, isValidNick,
  isValidRoom, isValidText,
} from './protocol.js';

export const SUBPROTOCOL = 'pulsechat';

// --- commands (src/client/command.cpp) ---------------------------------------------

const usages = [
  ['join', '/join ROOM', 'join ROOM (it becomes the current room)'],
  ['leave', '/leave [ROOM]', 'leave ROOM, or the current room'],
  ['switch', '/switch ROOM', 'make ROOM, which you are in, the current room'],
  ['rooms', '/rooms', "list the server's rooms (also /list)"],
  ['who', '/who [ROOM]', 'list who is in ROOM, or in the current room'],
  ['nick', '/nick NAME', 'change your nickname'],
  ['msg', '/msg NICK TEXT', 'send TEXT to NICK only'],
  ['help', '/help', 'show this help'],
  ['quit', '/quit', 'say goodbye and disconnect (also /exit)'],
  ['exit', '/exit', 'the same as /quit'],
];

export function helpText() {
  const lines = ['commands:'];
  for (const [, synopsis, what] of usages) lines.push(`  ${synopsis.padEnd(16)}${what}`);
  lines.push("any other line is said in the current room; start it with '//' to say a line beginning with '/'");
  lines.push('keys: Alt+1..9 pick a room tab, Alt+Left/Right the one before or after; Esc returns to this line');
  return lines.join('\n');
}

function usageError(name) {
  const u = usages.find(([n]) => n === name);
  return { kind: 'error', message: u ? `usage: ${u[1]}` : 'unknown command' };
}
const roomError = (room) => ({ kind: 'error', message: `'${room}' is not a room name: 1-64 letters, digits, '_', '-', '.', '#', starting with a letter, digit or '#'` });
const nickError = (nick) => ({ kind: 'error', message: `'${nick}' is not a nickname: 1-32 letters, digits, '_', '-', '.', starting with a letter or digit` });
const textError = { kind: 'error', message: 'a message must be valid UTF-8 without control characters' };

// The first blank-separated word of `s` and the trimmed rest.
function firstWord(s) {
  const t = s.replace(/^[ \t]+|[ \t]+$/g, '');
  const m = t.match(/^(\S+)[ \t]*(.*)$/s);
  return m ? [m[1], m[2].replace(/[ \t]+$/, '')] : ['', ''];
}

// One typed line into a command: {kind, ...}, as chat::command::parse does.
export function parseCommand(input) {
  const line = input.replace(/[\r\n]+$/, '');
  if (line.trim() === '') return { kind: 'empty' };
  if (line[0] !== '/') return isValidText(line) ? { kind: 'say', text: line } : textError;
  if (line[1] === '/') {
    const text = line.slice(1);
    return isValidText(text) ? { kind: 'say', text } : textError;
  }
  const [name, rest] = firstWord(line.slice(1));
  switch (name) {
    case 'join': case 'switch': {
      const [room, tail] = firstWord(rest);
      if (!room || tail) return usageError(name);
      if (!isValidRoom(room)) return roomError(room);
      return { kind: name, room };
    }
    case 'leave': case 'who': {
      const [room, tail] = firstWord(rest);
      if (tail) return usageError(name);
      if (room && !isValidRoom(room)) return roomError(room);
      return { kind: name, room: room || null };
    }
    case 'rooms': case 'list':
      if (rest) return usageError('rooms');
      return { kind: 'rooms' };
    case 'nick': {
      const [nick, tail] = firstWord(rest);
      if (!nick || tail) return usageError(name);
      if (!isValidNick(nick)) return nickError(nick);
      return { kind: 'nick', nick };
    }
    case 'msg': {
      const [nick, text] = firstWord(rest);
      if (!nick || !text) return usageError(name);
      if (!isValidNick(nick)) return nickError(nick);
      if (!isValidText(text)) return textError;
      return { kind: 'msg', nick, text };
    }
    case 'help': return { kind: 'help' };
    case 'quit': case 'exit': return { kind: 'quit' };
    case '': return { kind: 'error', message: "a lone '/' is not a command; /help lists them, '//text' says '/text'" };
    default:
      return { kind: 'error', message: `unknown command '/${name}' (nothing was sent); /help lists the commands, '//text' says a line starting with '/'` };
  }
}

// --- backoff (src/client/backoff.cpp) ----------------------------------------------

// Waits between reconnect attempts: doubling from `initial` up to `max`, each
// uniform in [base/2, base] ("equal jitter").
export class Backoff {
  constructor(initialMs = 200, maxMs = 30000, random = Math.random) {
    this.initial = Math.max(0, Math.min(initialMs, maxMs)); this.max = maxMs; this.random = random;
    this.reset();
  }
  next() {
    const base = this.base;
    this.attempts++;
    this.base = Math.min(this.max, base * 2 > 0 ? base * 2 : 1);
    if (base <= 1) return base;
    const half = Math.floor(base / 2);
    return half + Math.floor(this.random() * (base - half + 1));
  }
  reset() { this.base = this.initial; this.attempts = 0; }
}

// --- wording (src/client/display.cpp) ----------------------------------------------

const plural = (n, one, many) => `${n} ${n === 1n || n === 1 ? one : many}`;

export function formatDuration(ms) {
  if (ms < 1000) return `${Math.round(ms)}ms`;
  const s = ms / 1000;
  return s < 10 ? `${s.toFixed(1)}s` : `${Math.round(s)}s`;
}

// What a JOINED says, as chat_client words it.
export function joinedText(j, rejoin) {
  if (rejoin) {
    let text = 'rejoined';
    if (j.epochChanged) text += '; the room was started anew while you were away, so messages sent before that are lost';
    if (j.missed === MISSED_UNKNOWN) text += '; you missed messages the server no longer holds (it cannot tell how many)';
    else if (j.missed > 0n) text += `; you missed ${plural(j.missed, 'message', 'messages')} the server no longer holds`;
    if (j.historyCount > 0) text += `; ${plural(j.historyCount, 'message', 'messages')} from while you were away follow`;
    else if (j.missed === 0n && !j.epochChanged) text += '; nothing was said while you were away';
    return text;
  }
  if (j.quiet) return `joined a large room: joins and leaves are not shown here; /who ${j.room} lists who is in it`;
  return `joined; here: ${j.members.join(', ')}`;
}

export function presenceText(p, ownNick) {
  const who = p.nick === ownNick ? 'you' : p.nick;
  switch (p.event) {
    case 'joined': return `${who} joined`;
    case 'left': return `${who} left`;
    case 'timed_out': return `${who} timed out`;
    case 'disconnected': return `${who} disconnected${p.detail ? ` (${p.detail})` : ''}`;
    case 'renamed': return `${who} is now known as ${p.detail}`;
    default: return `${who}: ${p.event}`;
  }
}

// --- the session ---------------------------------------------------------------------

// Fatal errors after which reconnecting would fail again or fight another
// client (PROTOCOL.md section 9.1), as chat_client classifies them.
const protocolErrors = new Set(['unsupported_version', 'malformed_frame', 'unknown_type', 'frame_too_large',
  'invalid_utf8', 'hello_required', 'duplicate_hello']);

// View callbacks (all optional):
//   status({state, text, ...})   state: connecting | connected | reconnecting | timeout | disconnected | refused
//   joined(room, joinedMessage, rejoin, text)   a room was (re)joined
//   message(deliverMessage)      a DELIVER of a room the user is in
//   presence(presenceMessage, text)
//   whisper(whisperMessage)
//   members(room, nicks)         the member list of a room changed
//   rooms(list)                  ROOMS answer
//   nick(newNick, oldNick)
//   roomsChanged()               a room tab was added or removed, or the current room changed
//   notice(text, kind)           kind: info | error
export class Session {
  constructor({ url, nick, rooms = [], token = '', view = {}, WebSocketImpl = globalThis.WebSocket,
    connectTimeoutMs = 10000, reconnectInitialMs = 200, reconnectMaxMs = 30000, now = () => Date.now() }) {
    this.url = url; this.nick = nick; this.token = token; this.view = view;
    this.WebSocketImpl = WebSocketImpl; this.connectTimeoutMs = connectTimeoutMs; this.now = now;
    this.backoff = new Backoff(reconnectInitialMs, reconnectMaxMs);
    this.resumeToken = '';
    this.rooms = [];                 // {name, joined, rejoining, last: {epoch, seq}|null, historyLeft, members: []}
    for (const r of rooms) if (!this.find(r)) this.rooms.push(this.newRoom(r));
    this.current = this.rooms.length ? this.rooms[0].name : '';
    this.queue = [];                 // requests not yet sent
    this.inFlight = null;            // the request sent and not yet answered
    this.unconfirmed = null;         // a SAY of unknown fate after a lost connection
    this.retryDelay = 100; this.pausedUntil = 0;
    this.ws = null; this.welcomed = false; this.everWelcomed = false; this.finished = false;
    this.timers = {};
    this.heartbeatIntervalMs = 5000; this.heartbeatTimeoutMs = 15000;
    this.maxFrame = DEFAULT_MAX_FRAME;  // until a WELCOME says otherwise
    this.nickRetryUntil = 0;
  }

  newRoom(name) { return { name, joined: false, rejoining: false, last: null, historyLeft: 0, members: [] }; }
  find(name) { return this.rooms.find((r) => r.name === name) ?? null; }
  has(name) { return this.find(name) !== null; }
  connected() { return this.welcomed; }
  pending() { return this.queue.length + (this.inFlight ? 1 : 0) + (this.unconfirmed ? 1 : 0); }
  emit(name, ...args) { const f = this.view[name]; if (f) f(...args); }
  status(state, text, extra = {}) { this.emit('status', { state, text, ...extra }); }

  // --- what the user does ---

  // A typed line; returns nothing, tells the view.
  input(line) {
    const c = parseCommand(line);
    const refuse = (why) => { if (why) this.emit('notice', why, 'error'); return !!why; };
    switch (c.kind) {
      case 'empty': return;
      case 'error': refuse(c.message); return;
      case 'say':
        if (!this.current) { refuse('you are in no room: /join ROOM first'); return; }
        this.request({ type: Type.SAY, room: this.current, text: c.text }, true);
        return;
      case 'msg': this.request({ type: Type.WHISPER, peer: c.nick, timestampMs: 0n, text: c.text }, true); return;
      case 'join':
        if (this.has(c.room)) { this.switchTo(c.room); this.emit('notice', `now talking in #${c.room}`, 'info'); return; }
        this.join(c.room); return;
      case 'switch':
        if (!refuse(this.switchTo(c.room))) this.emit('notice', `now talking in #${c.room}`, 'info');
        return;
      case 'leave': {
        const room = c.room ?? this.current;
        if (!room) { refuse('you are in no room'); return; }
        refuse(this.leave(room)); return;
      }
      case 'who': {
        const room = c.room ?? this.current;
        if (!room) { refuse('you are in no room: /who ROOM'); return; }
        this.request({ type: Type.WHO, room }); return;
      }
      case 'rooms': this.request({ type: Type.LIST }); return;
      case 'nick': this.request({ type: Type.NICK, oldNick: '', newNick: c.nick }); return;
      case 'help': this.emit('notice', helpText(), 'info'); return;
      case 'quit': this.quit('quit'); return;
    }
  }

  join(room) {
    if (this.has(room)) return `already in #${room}`;
    this.rooms.push(this.newRoom(room));
    this.current = room;
    this.emit('roomsChanged');
    this.request({ type: Type.JOIN, room, resume: false });
    return null;
  }

  leave(room) {
    if (!this.has(room)) return `not in #${room}`;
    this.forgetRoom(room);
    this.request({ type: Type.LEAVE, room });
    return null;
  }

  switchTo(room) {
    if (!this.has(room)) return `not in #${room}: /join ${room} first`;
    if (this.current !== room) { this.current = room; this.emit('roomsChanged'); }
    return null;
  }

  forgetRoom(name) {
    const at = this.rooms.findIndex((r) => r.name === name);
    if (at < 0) return;
    this.rooms.splice(at, 1);
    if (this.current === name) this.current = this.rooms.length ? this.rooms[Math.min(at, this.rooms.length - 1)].name : '';
    this.emit('roomsChanged');
  }

  request(m, chat = false) {
    // A payload over the server's max_frame would end the connection (frame_too_large, fatal).
    const size = encodeFrame(m).length - HEADER_SIZE;
    if (size > this.maxFrame) {
      this.emit('notice', `that message is too long: ${size} bytes, the server takes at most ${this.maxFrame} (nothing was sent)`, 'error');
      return;
    }
    this.queue.push(m);
    if (chat && !this.welcomed) this.emit('notice', 'not connected: this goes out once the client has reconnected', 'info');
    this.pump();
  }

  // --- the connection ---

  start() {
    this.finished = false;
    this.connect();
  }

  quit(reason = 'quit') {
    if (this.finished) return;
    if (this.ws && this.ws.readyState === 1) {
      try { this.ws.send(encodeFrame({ type: Type.BYE, reason })); } catch { /* closing anyway */ }
    }
    this.finish('disconnected', `disconnected: ${reason}`, { reason });
  }

  finish(state, text, extra = {}) {
    this.finished = true;
    this.clearTimers();
    this.welcomed = false;
    this.dropSocket();
    this.status(state, text, extra);
  }

  clearTimers() {
    for (const t of Object.values(this.timers)) { clearTimeout(t); clearInterval(t); }
    this.timers = {};
  }

  dropSocket() {
    const ws = this.ws;
    this.ws = null;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
    try { ws.close(1000); } catch { /* already closed */ }
  }

  connect() {
    this.clearTimers();
    this.status('connecting', `connecting to ${this.url} as ${this.nick} ...`);
    let ws;
    try {
      ws = new this.WebSocketImpl(this.url, SUBPROTOCOL);
    } catch (e) {
      this.finish('refused', `cannot connect to ${this.url}: ${e.message}`);
      return;
    }
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    this.opened = false;
    this.welcomed = false;
    this.decoder = new Decoder();
    this.sessionStart = this.now();
    // The login, too, has the connect timeout to be answered.
    this.timers.connect = setTimeout(() => this.lost(`no answer within ${formatDuration(this.connectTimeoutMs)}`), this.connectTimeoutMs);
    ws.onopen = () => {
      this.opened = true;
      if (ws.protocol !== SUBPROTOCOL) { this.lost(`the server did not agree to the '${SUBPROTOCOL}' subprotocol`); return; }
      this.lastRx = this.now();
      this.sendFrame({ type: Type.HELLO, nick: this.nick, token: this.token, resumeToken: this.resumeToken });
    };
    ws.onmessage = (ev) => this.onData(ev.data);
    ws.onerror = () => {};   // onclose follows with the details there are
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      if (!this.opened) this.connectFailed();
      else this.lost(`connection closed${ev.code && ev.code !== 1005 && ev.code !== 1006 ? ` (${ev.code}${ev.reason ? ` ${ev.reason}` : ''})` : ''}`);
    };
  }

  // The WebSocket failed before it opened. A browser does not say why (a
  // refused Origin and a server that is down both look like close 1006), so
  // ask the page's own server whether it is up.
  async connectFailed() {
    const ws = this.ws;
    this.dropSocket();
    const origin = globalThis.location?.origin;
    let why = 'the connection failed';
    if (origin) {
      why += ` (the server is down, or it refused this page: it takes pages from another origin, here ${origin}, ` +
        `only when started with --ws-allow-origin ${origin})`;
    }
    let refused = false;
    try {
      const target = new URL(this.url);
      if (origin && target.host === globalThis.location.host) {
        const r = await fetch(globalThis.location.href, { method: 'HEAD', cache: 'no-store' });
        if (r) {
          refused = true;
          why = `the server is up but refused this page's WebSocket connection: the page's origin ${origin} is not ` +
            `one it accepts (started with --ws-allow-origin, it takes only the origins listed there)`;
        }
      }
    } catch { /* the server is not reachable at all */ }
    if (this.finished || this.ws !== null && this.ws !== ws) return;
    if (!this.everWelcomed) {
      this.finish('refused', `cannot connect to ${this.url}: ${why}`, { refused });
      return;
    }
    this.reconnectLater(why);
  }

  lost(why) {
    if (this.finished) return;
    const wasWelcomed = this.welcomed;
    this.welcomed = false;
    this.clearTimers();
    this.dropSocket();
    for (const notice of this.onDisconnected()) this.emit('notice', notice, 'info');
    if (!this.everWelcomed) {
      this.finish('refused', `cannot connect to ${this.url}: ${why}`);
      return;
    }
    // A session that lasted was a success: the next loss starts the backoff anew.
    if (wasWelcomed && this.now() - this.sessionStart >= 2000 && !this.nickRetryUntil) this.backoff.reset();
    this.reconnectLater(why);
  }

  reconnectLater(why) {
    const delay = this.backoff.next();
    const attempt = this.backoff.attempts;
    const until = this.now() + delay;
    const show = () => {
      const left = Math.max(0, until - this.now());
      let text = `${this.serverSilent ? 'server not responding; ' : ''}reconnecting in ${Math.ceil(left / 1000)}s (attempt ${attempt})`;
      if (why) text += `; ${attempt > 1 ? 'last attempt' : 'lost'}: ${why}`;
      this.status('reconnecting', text, { delay, attempt, why });
    };
    show();
    this.timers.countdown = setInterval(show, 500);
    this.timers.reconnect = setTimeout(() => { clearInterval(this.timers.countdown); this.connect(); }, delay);
  }

  sendFrame(m) {
    if (!this.ws || this.ws.readyState !== 1) return false;
    this.ws.send(encodeFrame(m));
    this.lastTx = this.now();
    return true;
  }

  onData(data) {
    if (this.finished || !this.ws) return;
    this.lastRx = this.now();
    this.decoder.feed(new Uint8Array(data));
    for (;;) {
      let m;
      try {
        m = this.decoder.next();
      } catch (e) {
        if (e instanceof DecodeError) {
          this.finish('disconnected', `disconnected: the server sent a frame this client cannot read (${e.kind})`);
          return;
        }
        throw e;
      }
      if (!m) break;
      this.onFrame(m);
      if (this.finished || !this.ws) return;
      this.pump();  // an answer frees the way for the next request
    }
  }

  // Heartbeats (PROTOCOL.md section 7): HEARTBEAT after one quiet interval,
  // and the server is given up when nothing came for its heartbeat timeout.
  watch() {
    clearTimeout(this.timers.watch);
    if (!this.welcomed) return;
    const now = this.now();
    const silent = now - this.lastRx;
    if (silent >= this.heartbeatTimeoutMs) {
      const text = `server not responding: nothing received for ${formatDuration(silent)} (timeout ${formatDuration(this.heartbeatTimeoutMs)}); closing`;
      this.serverSilent = true;
      this.status('timeout', text, { silentMs: silent, timeoutMs: this.heartbeatTimeoutMs });
      this.lost('server not responding');
      return;
    }
    if (now - this.lastTx >= this.heartbeatIntervalMs) this.sendFrame({ type: Type.HEARTBEAT });
    const next = Math.min(this.lastTx + this.heartbeatIntervalMs, this.lastRx + this.heartbeatTimeoutMs, this.pausedUntil > now ? this.pausedUntil : Infinity);
    this.timers.watch = setTimeout(() => { this.watch(); this.pump(); }, Math.max(5, next - this.now() + 1));
  }

  onWelcome(w) {
    clearTimeout(this.timers.connect);
    const reconnect = this.everWelcomed;
    this.serverSilent = false;
    this.welcomed = true; this.everWelcomed = true;
    this.nick = w.nick; this.resumeToken = w.resumeToken;
    this.heartbeatIntervalMs = w.heartbeatIntervalMs > 0 ? w.heartbeatIntervalMs : 5000;
    this.heartbeatTimeoutMs = w.heartbeatTimeoutMs > 0 ? w.heartbeatTimeoutMs : 15000;
    this.nickRetryUntil = 0;
    if (w.maxFrame > 0) { this.maxFrame = w.maxFrame; this.decoder.maxPayload = w.maxFrame + MAX_FRAME_OVERHEAD; }
    this.sessionStart = this.now();
    this.pausedUntil = 0;
    if (this.unconfirmed && !this.has(this.unconfirmed.room)) this.unconfirmed = null;
    // Rejoins go first, in the original join order, each resuming after the newest message seen there.
    const rejoins = this.rooms.map((r) => {
      r.joined = false; r.rejoining = false; r.historyLeft = 0;
      return r.last ? { type: Type.JOIN, room: r.name, resume: true, after: r.last } : { type: Type.JOIN, room: r.name, resume: false };
    });
    this.queue.unshift(...rejoins);
    this.status('connected', `${reconnect ? 'reconnected to' : 'connected to'} ${this.url} (${w.serverName} ${w.serverVersion}) as ${w.nick}`,
      { reconnect, nick: w.nick, heartbeatIntervalMs: this.heartbeatIntervalMs, heartbeatTimeoutMs: this.heartbeatTimeoutMs });
    this.emit('nick', w.nick, null);
    this.watch();
  }

  onDisconnected() {
    const notices = [];
    const r = this.inFlight;
    this.inFlight = null;
    if (r) {
      if (r.type === Type.SAY) {
        if (this.unconfirmed) this.queue.unshift(r); else this.unconfirmed = r;
      } else if (r.type === Type.WHISPER) {
        notices.push(`the private message to ${r.peer} may not have arrived (the connection was lost)`);
      } else if (r.type === Type.NICK || r.type === Type.LIST || r.type === Type.WHO) {
        this.queue.unshift(r);  // asking again does no harm
      }
      // JOIN and LEAVE: the rejoin after reconnecting covers them.
    }
    this.queue = this.queue.filter((m) => m.type !== Type.JOIN && m.type !== Type.LEAVE);
    for (const room of this.rooms) { room.joined = false; room.rejoining = false; room.historyLeft = 0; }
    return notices;
  }

  // Whether `reply` answers the request in flight (client_state.cpp's answers()).
  answers(m) {
    const r = this.inFlight;
    if (!r) return false;
    switch (m.type) {
      case Type.ERROR: return !m.fatal;
      case Type.JOINED: return r.type === Type.JOIN && r.room === m.room;
      case Type.PRESENCE: return r.type === Type.LEAVE && m.event === 'left' && m.nick === this.nick && m.room === r.room;
      case Type.DELIVER: return r.type === Type.SAY && !m.history && m.sender === this.nick && m.room === r.room && m.text === r.text;
      case Type.WHISPER: return r.type === Type.WHISPER && m.echo && m.peer === r.peer && m.text === r.text;
      case Type.NICK: return r.type === Type.NICK;
      case Type.ROOMS: return r.type === Type.LIST;
      case Type.MEMBERS: return r.type === Type.WHO && r.room === m.room;
      default: return false;
    }
  }

  historyDone(room) {
    room.rejoining = false;
    if (this.unconfirmed && this.unconfirmed.room === room.name) {
      this.emit('notice', `sending again what may not have reached the server: ${this.unconfirmed.text}`, 'info');
      this.queue.unshift(this.unconfirmed);
      this.unconfirmed = null;
    }
  }

  setMembers(room, nicks) { room.members = nicks; this.emit('members', room.name, nicks.slice()); }

  onFrame(m) {
    const answer = this.answers(m);
    const request = answer ? this.inFlight : null;
    if (answer) this.inFlight = null;
    if (!this.welcomed) {
      if (m.type === Type.WELCOME) { this.onWelcome(m); return; }
      if (m.type === Type.ERROR) { this.fatalError(m); return; }
      if (m.type === Type.BYE) { this.lost(`the server said goodbye: ${m.reason}`); return; }
      this.finish('disconnected', `disconnected: the server sent ${m.name} before WELCOME`);
      return;
    }
    switch (m.type) {
      case Type.PING: this.sendFrame({ type: Type.PONG, nonce: m.nonce }); break;
      case Type.PONG: break;
      case Type.JOINED: {
        const room = this.find(m.room);
        if (!room) break;
        room.joined = true;
        room.rejoining = !!(request && request.type === Type.JOIN && request.resume);
        const rejoin = room.rejoining;
        if (!room.last || room.last.epoch !== m.epoch) room.last = { epoch: m.epoch, seq: 0n };
        room.historyLeft = m.historyCount;
        this.emit('joined', room.name, m, rejoin, joinedText(m, rejoin));
        this.setMembers(room, m.quiet ? m.members.slice() : m.members.slice());
        if (m.historyCount === 0) {
          if (room.last.seq < m.headSeq) room.last.seq = m.headSeq;
          this.historyDone(room);
        }
        break;
      }
      case Type.DELIVER: {
        const room = this.find(m.room);
        if (!room) break;
        const p = m.position;
        if (!room.last || room.last.epoch !== p.epoch || room.last.seq < p.seq) room.last = { epoch: p.epoch, seq: p.seq };
        this.emit('message', m);
        if (m.history && room.historyLeft > 0) {
          if (this.unconfirmed && this.unconfirmed.room === m.room && m.sender === this.nick && m.text === this.unconfirmed.text) {
            this.unconfirmed = null;  // it did arrive before the connection died
          }
          if (--room.historyLeft === 0) this.historyDone(room);
        }
        break;
      }
      case Type.WHISPER: this.emit('whisper', m); break;
      case Type.PRESENCE: {
        const room = this.find(m.room);
        if (room) {
          let nicks = room.members.filter((n) => n !== m.nick);
          if (m.event === 'joined') nicks = [...nicks, m.nick];
          else if (m.event === 'renamed') nicks = room.members.map((n) => (n === m.nick ? m.detail : n));
          if (!(m.event === 'left' && m.nick === this.nick)) this.setMembers(room, nicks);
        }
        this.emit('presence', m, presenceText(m, this.nick));
        break;
      }
      case Type.NICK: {
        const old = this.nick;
        this.nick = m.newNick;
        for (const room of this.rooms) {
          if (room.members.includes(old)) this.setMembers(room, room.members.map((n) => (n === old ? m.newNick : n)));
        }
        this.emit('nick', m.newNick, old);
        break;
      }
      case Type.ROOMS: this.emit('rooms', m.rooms); break;
      case Type.MEMBERS: {
        const room = this.find(m.room);
        if (room) this.setMembers(room, m.nicks.slice());
        this.emit('notice', `** #${m.room}: ${m.nicks.join(', ')}`, 'info');
        break;
      }
      case Type.ERROR:
        if (m.fatal) { this.fatalError(m); return; }
        this.onRequestError(m, request);
        break;
      case Type.BYE: this.lost(`the server said goodbye: ${m.reason}`); return;
      default:
        this.finish('disconnected', `disconnected: the server sent ${m.name}, which a client never gets`);
        return;
    }
    if (answer && m.type !== Type.ERROR) this.retryDelay = 100;
  }

  onRequestError(m, request) {
    let text = `${m.reason} (${m.codeName})`;
    if (request && m.codeName === 'rate_limited') {
      // Refused, not lost: the same request goes again after a pause that doubles while the server keeps refusing.
      text += `; sending it again in ${formatDuration(this.retryDelay)}`;
      this.pausedUntil = this.now() + this.retryDelay;
      this.retryDelay = Math.min(this.retryDelay * 2, 3200);
      this.queue.unshift(request);
      this.watch();
    } else if (request && request.type === Type.JOIN) {
      const room = this.find(request.room);
      if (room && !room.joined) this.forgetRoom(request.room);
    }
    this.emit('notice', text, 'error');
  }

  fatalError(m) {
    const why = `${m.codeName}: ${m.reason}`;
    if (m.codeName === 'nick_taken' && this.everWelcomed) {
      // Our own old session may still hold the nick: retry until the server surely expired it.
      const now = this.now();
      if (!this.nickRetryUntil) this.nickRetryUntil = now + Math.max(3 * this.heartbeatTimeoutMs, 5000);
      if (now < this.nickRetryUntil) { this.lost(`nickname '${this.nick}' is still held on the server; retrying`); return; }
    }
    if (['nick_taken', 'invalid_nick', 'auth_failed', 'replaced'].includes(m.codeName) || protocolErrors.has(m.codeName) || !this.everWelcomed) {
      this.onDisconnected();
      this.finish('refused', `disconnected: ${why}`, { code: m.codeName });
      return;
    }
    this.lost(why);
  }

  // Sends the next request when none is in flight (client_state.cpp's next_request()).
  pump() {
    if (!this.welcomed || this.inFlight || this.queue.length === 0) return;
    if (this.now() < this.pausedUntil) return;
    const m = this.queue.shift();
    this.inFlight = m;
    if (!this.sendFrame(m)) { this.inFlight = null; this.queue.unshift(m); return; }
    if (m.type === Type.JOIN || m.type === Type.LEAVE) {
      // Nothing else to do: JOINED or PRESENCE(left) answers it.
    }
    this.watch();
  }
}
