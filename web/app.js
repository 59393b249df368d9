// The pulsechat page: the DOM around web/session.js.
//
// Safety: everything that came from the server or another user is put into
// the page with textContent or as an attribute value, never as markup; the
// page has no inline script or style (the server's Content-Security-Policy
// forbids both), and state shows through classes, attributes and `hidden`.
//
// Test hooks (read-only, from the DOM): every chat line is an <li> with
// data-room, data-kind and, for messages, data-seq, data-epoch, data-nick and
// data-history; #status has data-state; <body> has data-nick once connected.
//
// Query parameters: nick, room (repeatable, or separated by spaces or commas),
// token, autoconnect=1, ws (the WebSocket URL; default: /ws on this page's host).

import { isValidNick, isValidRoom } from './protocol.js';
import { Session } from './session.js';

const $ = (id) => document.getElementById(id);
const el = (tag, className, text) => {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
};

const statusEl = $('status');
const connectForm = $('connect-form');
const connectNick = $('connect-nick');
const connectRooms = $('connect-rooms');
const connectError = $('connect-error');
const chat = $('chat');
const tabsEl = $('tabs');
const panelsEl = $('panels');
const membersEl = $('members');
const memberList = $('member-list');
const membersTitle = $('members-title');
const toggleMembers = $('toggle-members');
const sayForm = $('say-form');
const line = $('line');

let session = null;
let nextId = 1;
// room name -> {tab, panel, log, unread}; '' is the console shown when no room is open.
const views = new Map();

function clock(ms) {
  const d = ms === undefined ? new Date() : new Date(Number(ms));
  return d.toTimeString().slice(0, 8);
}

// --- rooms as tabs -----------------------------------------------------------------

function makeView(room) {
  const id = nextId++;
  const panel = el('div', 'panel');
  panel.id = `panel-${id}`;
  panel.setAttribute('role', 'tabpanel');
  panel.hidden = true;
  const log = el('ol', 'log');
  log.setAttribute('role', 'log');
  log.setAttribute('aria-live', 'polite');
  log.tabIndex = 0;
  log.setAttribute('aria-label', room ? `messages in #${room}` : 'notices');
  panel.append(log);
  panelsEl.append(panel);
  let tab = null;
  if (room) {
    tab = el('button', 'tab');
    tab.type = 'button';
    tab.id = `tab-${id}`;
    tab.setAttribute('role', 'tab');
    tab.setAttribute('aria-controls', panel.id);
    tab.dataset.room = room;
    tab.append(el('span', 'tab-name', `#${room}`), el('span', 'unread'));
    const close = el('span', 'tab-close', '×');
    close.setAttribute('aria-hidden', 'true');
    close.title = `leave #${room} (Delete)`;
    close.addEventListener('click', (ev) => { ev.stopPropagation(); leaveRoom(room); });
    tab.append(close);
    tab.addEventListener('click', () => { session?.switchTo(room); });
    tab.addEventListener('keydown', onTabKey);
    panel.setAttribute('aria-labelledby', tab.id);
    tabsEl.append(tab);
  } else {
    panel.setAttribute('aria-label', 'notices');
  }
  const v = { room, tab, panel, log, unread: 0 };
  views.set(room, v);
  return v;
}

function viewOf(room) { return views.get(room) ?? null; }
function currentView() {
  const room = session?.current ?? '';
  return viewOf(room) ?? viewOf('') ?? makeView('');
}

function leaveRoom(room) {
  if (!session) return;
  const why = session.leave(room);
  if (why) notice(why, 'error');
}

// Puts the tabs in the session's order, shows the current room's panel.
function syncRooms() {
  const names = session ? session.rooms.map((r) => r.name) : [];
  for (const [room, v] of views) {
    if (room && !names.includes(room)) { v.tab.remove(); v.panel.remove(); views.delete(room); }
  }
  for (const name of names) {
    const v = viewOf(name) ?? makeView(name);
    tabsEl.append(v.tab);  // (re)appending keeps the session's order
  }
  const current = session?.current ?? '';
  if (!current && !viewOf('')) makeView('');
  for (const [room, v] of views) {
    const selected = room === current;
    v.panel.hidden = !selected;
    if (v.tab) {
      v.tab.setAttribute('aria-selected', String(selected));
      v.tab.tabIndex = selected ? 0 : -1;
      v.tab.classList.toggle('selected', selected);
      if (selected) { v.unread = 0; v.tab.classList.remove('has-unread'); v.tab.querySelector('.unread').textContent = ''; }
    }
  }
  if (current) scrollDown(viewOf(current), true);
  renderMembers();
}

function selectTab(index) {
  if (!session) return;
  const r = session.rooms[index];
  if (r) session.switchTo(r.name);
}

function onTabKey(ev) {
  if (!session) return;
  const names = session.rooms.map((r) => r.name);
  const at = names.indexOf(ev.currentTarget.dataset.room);
  let to = -1;
  switch (ev.key) {
    case 'ArrowLeft': to = (at - 1 + names.length) % names.length; break;
    case 'ArrowRight': to = (at + 1) % names.length; break;
    case 'Home': to = 0; break;
    case 'End': to = names.length - 1; break;
    case 'Delete': ev.preventDefault(); leaveRoom(names[at]); viewOf(session.current)?.tab?.focus(); return;
    case 'Enter': ev.preventDefault(); line.focus(); return;
    default: return;
  }
  ev.preventDefault();
  session.switchTo(names[to]);
  viewOf(names[to])?.tab?.focus();
}

document.addEventListener('keydown', (ev) => {
  if (!session || chat.hidden) return;
  if (ev.altKey && !ev.ctrlKey && !ev.metaKey && /^[1-9]$/.test(ev.key)) {
    ev.preventDefault(); selectTab(Number(ev.key) - 1);
  } else if (ev.altKey && (ev.key === 'PageUp' || ev.key === 'PageDown')) {
    ev.preventDefault();
    const names = session.rooms.map((r) => r.name);
    if (names.length === 0) return;
    const at = names.indexOf(session.current);
    selectTab((at + (ev.key === 'PageUp' ? -1 : 1) + names.length) % names.length);
  } else if (ev.key === 'Escape') {
    line.focus();
  }
});

// --- the member list -----------------------------------------------------------------

function renderMembers() {
  const room = session?.find(session.current);
  const nicks = room ? room.members : [];
  membersTitle.textContent = room ? `members of #${room.name} (${nicks.length})` : 'members';
  toggleMembers.textContent = `members (${nicks.length})`;
  const items = [...nicks].sort((a, b) => a.localeCompare(b)).map((n) => {
    const li = el('li', n === session.nick ? 'me' : '', n);
    li.dataset.nick = n;
    return li;
  });
  memberList.replaceChildren(...items);
}

toggleMembers.addEventListener('click', () => {
  const open = !membersEl.classList.contains('open');
  membersEl.classList.toggle('open', open);
  toggleMembers.setAttribute('aria-expanded', String(open));
});

// --- lines -----------------------------------------------------------------------------

function nearBottom(log) { return log.scrollHeight - log.scrollTop - log.clientHeight < 40; }
function scrollDown(v, force = false) {
  if (v && (force || v.stick !== false)) v.log.scrollTop = v.log.scrollHeight;
}

// Appends <li> to a room's log (the current one when `room` is null).
function append(room, li) {
  const v = room === null ? currentView() : viewOf(room);
  if (!v) return;
  const stick = nearBottom(v.log);
  v.log.append(li);
  if (stick) scrollDown(v, true);
  if (v.tab && session && v.room !== session.current && li.dataset.kind === 'message' && li.dataset.history !== '1') {
    v.unread++;
    v.tab.classList.add('has-unread');
    v.tab.querySelector('.unread').textContent = String(v.unread);
  }
}

function infoLine(kind, text, ms) {
  const li = el('li', `line ${kind}`);
  li.dataset.kind = kind;
  li.append(el('time', 'ts', clock(ms)), el('span', 'text', text));
  return li;
}

function notice(text, kind = 'info') {
  const li = infoLine(kind, kind === 'error' ? `!! ${text}` : text);
  append(null, li);
}

function onMessage(m) {
  const li = el('li', 'line msg');
  li.dataset.kind = 'message';
  li.dataset.room = m.room;
  li.dataset.seq = String(m.position.seq);
  li.dataset.epoch = String(m.position.epoch);
  li.dataset.nick = m.sender;
  if (m.history) { li.dataset.history = '1'; li.classList.add('history'); }
  if (session && m.sender === session.nick) li.classList.add('own');
  const time = el('time', 'ts', clock(m.timestampMs));
  time.dateTime = new Date(Number(m.timestampMs)).toISOString();
  li.append(time, el('span', 'nick', m.sender), el('span', 'text', m.text));
  append(m.room, li);
}

function onJoined(room, j, rejoin, text) {
  const li = infoLine('joined', `#${room} -- ${text}`);
  li.dataset.room = room;
  if (rejoin) li.dataset.rejoin = '1';
  if (j.epochChanged) { li.classList.add('break'); li.dataset.epochChanged = '1'; }
  if (j.missed > 0n) li.dataset.missed = String(j.missed);
  append(room, li);
}

function onPresence(p, text) {
  const li = infoLine('presence', `#${p.room} -- ${text}`);
  li.dataset.room = p.room;
  li.dataset.event = p.event;
  append(viewOf(p.room) ? p.room : null, li);
}

function onWhisper(w) {
  const li = el('li', 'line whisper');
  li.dataset.kind = 'whisper';
  li.dataset.peer = w.peer;
  if (w.echo) li.dataset.echo = '1';
  li.append(el('time', 'ts', clock(w.timestampMs || undefined)),
    el('span', 'whisper-peer', w.echo ? `→ ${w.peer}` : w.peer),
    el('span', 'text', w.text));
  li.setAttribute('aria-label', w.echo ? `private message to ${w.peer}` : `private message from ${w.peer}`);
  append(null, li);
}

function onRooms(list) {
  const text = list.length === 0 ? '** no rooms' : `** rooms: ${list.map((r) => `#${r.name} (${r.members})`).join(' ')}`;
  append(null, infoLine('rooms', text));
}

function onStatus(s) {
  statusEl.dataset.state = s.state;
  statusEl.textContent = s.text;
  if (s.state === 'connected') {
    line.disabled = false;
  }
  if (s.state === 'timeout' || s.state === 'disconnected' || s.state === 'refused') {
    append(null, infoLine(s.state === 'timeout' ? 'status-warn' : 'status-bad', `** ${s.text}`));
  } else if (s.state === 'connected') {
    append(null, infoLine('status-ok', `** ${s.text}`));
  }
  if (s.state === 'disconnected' || s.state === 'refused') {
    // The session is over: offer the form again (the chat stays readable).
    connectForm.hidden = false;
    connectError.textContent = s.state === 'refused' ? s.text : '';
    line.disabled = true;
    if (chat.hidden) connectNick.focus();
  }
}

// --- connecting ------------------------------------------------------------------------

function defaultUrl() {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/ws`;
}

function splitRooms(values) {
  return values.flatMap((v) => v.split(/[\s,]+/)).filter((r) => r !== '');
}

function connect(nick, rooms, token, url) {
  if (session) session.quit('reconnecting from the form');
  for (const v of views.values()) { v.tab?.remove(); v.panel.remove(); }
  views.clear();
  session = new Session({
    url, nick, rooms, token,
    view: {
      status: onStatus,
      joined: onJoined,
      message: onMessage,
      presence: onPresence,
      whisper: onWhisper,
      members: (room) => { if (session && room === session.current) renderMembers(); },
      rooms: onRooms,
      nick: (n, old) => {
        document.body.dataset.nick = n;
        if (old !== null) append(null, infoLine('nick-change', `-- you are now known as ${n}`));
        renderMembers();
      },
      roomsChanged: syncRooms,
      notice,
    },
  });
  connectForm.hidden = true;
  chat.hidden = false;
  connectError.textContent = '';
  syncRooms();
  line.disabled = false;
  line.focus();
  session.start();
}

connectForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const nick = connectNick.value.trim();
  const rooms = splitRooms([connectRooms.value]);
  if (!isValidNick(nick)) {
    connectError.textContent = `'${nick}' is not a nickname: 1-32 letters, digits, '_', '-', '.', starting with a letter or digit`;
    connectNick.setAttribute('aria-invalid', 'true');
    connectNick.focus();
    return;
  }
  connectNick.removeAttribute('aria-invalid');
  const bad = rooms.find((r) => !isValidRoom(r));
  if (bad !== undefined) {
    connectError.textContent = `'${bad}' is not a room name: 1-64 letters, digits, '_', '-', '.', '#', starting with a letter, digit or '#'`;
    connectRooms.focus();
    return;
  }
  connect(nick, rooms.length ? rooms : ['lobby'], params.get('token') ?? '', params.get('ws') ?? defaultUrl());
});

sayForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  if (!session) return;
  const text = line.value;
  line.value = '';
  session.input(text);
  line.focus();
});

$('add-room').addEventListener('click', () => {
  line.value = '/join ';
  line.focus();
});

const params = new URLSearchParams(location.search);
connectNick.value = params.get('nick') ?? '';
connectRooms.value = splitRooms(params.getAll('room')).join(' ');
if (params.get('autoconnect') === '1' && connectNick.value) {
  connectForm.requestSubmit();
} else {
  connectNick.focus();
}
