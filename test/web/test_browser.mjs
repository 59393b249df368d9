// The web client (web/) in headless Chromium, against real chat_server and
// chat_client processes: several participants see one order, a SIGSTOPped
// server is reported within its heartbeat timeout and the page resumes without
// losing a message, pages from other origins are refused, text is never markup,
// and the page works by keyboard and on a phone-sized screen.
//
// Run by meson (suite browser, outside the default setup):
//   meson test -C build --setup browser --suite browser
// or directly: CHAT_SERVER=build/chat_server CHAT_CLIENT=build/chat_client node test/web/test_browser.mjs
// Needs chromium (Debian: chromium; or CHROMIUM=path) and puppeteer-core (npm ci in
// test/web; scripts/pulsechat deps --browser does both); exits 77 (skipped) without them.
// PULSECHAT_SCREENSHOT=path.png saves a screenshot of a page with two rooms.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import http from 'node:http';
import { createRequire } from 'node:module';
import { dirname, extname, join, resolve } from 'node:path';
import readline from 'node:readline';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = process.env.PULSECHAT_SOURCE_DIR ?? resolve(here, '..', '..');
const webDir = join(root, 'web');

// Exit 77 (meson: skipped), or fail where the environment says the suite must run (CI).
function skip(why) {
  if (process.env.PULSECHAT_REQUIRE_BROWSER === '1') {
    console.error(`FAIL: ${why} (PULSECHAT_REQUIRE_BROWSER=1: the browser suite must run here)`);
    process.exit(1);
  }
  console.log(`SKIP: ${why}`);
  process.exit(77);
}

const chromium = [process.env.CHROMIUM, '/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/bin/google-chrome']
  .find((p) => p && existsSync(p));
if (!chromium) skip('no chromium found (Debian: apt-get install chromium, or scripts/pulsechat deps --browser; or set CHROMIUM=path)');
let puppeteer;
try {
  puppeteer = createRequire(join(here, 'package.json'))('puppeteer-core');
} catch {
  skip('puppeteer-core is not installed: run (cd test/web && PUPPETEER_SKIP_DOWNLOAD=1 npm ci), or scripts/pulsechat deps --browser');
}

const chatServer = process.env.CHAT_SERVER ?? join(root, 'build', 'chat_server');
const chatClient = process.env.CHAT_CLIENT ?? join(root, 'build', 'chat_client');
for (const p of [chatServer, chatClient]) assert.ok(existsSync(p), `${p} exists (set CHAT_SERVER / CHAT_CLIENT)`);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const children = new Set();
process.on('exit', () => { for (const c of children) c.kill('SIGKILL'); });

// --- processes ---------------------------------------------------------------------

// A child process whose output lines are kept and can be waited for.
class Proc {
  constructor(cmd, args, name) {
    this.name = name;
    this.lines = [];
    this.waiters = [];
    this.child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    children.add(this.child);
    this.exited = new Promise((res) => this.child.on('exit', (code, signal) => { children.delete(this.child); res({ code, signal }); }));
    for (const stream of [this.child.stdout, this.child.stderr]) {
      readline.createInterface({ input: stream }).on('line', (l) => {
        this.lines.push(l);
        for (const w of [...this.waiters]) if (w.test(l)) { this.waiters.splice(this.waiters.indexOf(w), 1); w.resolve(l); }
      });
    }
  }
  // The first line (seen so far or to come) that passes `test`.
  waitLine(test, ms = 10000, what = String(test)) {
    const seen = this.lines.find(test);
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise((resolveLine, reject) => {
      const w = { test, resolve: (l) => { clearTimeout(timer); resolveLine(l); } };
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        reject(new Error(`${this.name}: no line ${what} within ${ms} ms; output ends:\n${this.lines.slice(-15).join('\n')}`));
      }, ms);
      this.waiters.push(w);
    });
  }
  write(text) { this.child.stdin.write(text); }
  signal(sig) { this.child.kill(sig); }
  async stop() {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill('SIGCONT');
    this.child.kill('SIGTERM');
    const t = setTimeout(() => this.child.kill('SIGKILL'), 3000);
    await this.exited;
    clearTimeout(t);
  }
}

const started = [];

// chat_server on 127.0.0.1 with a WebSocket port; {tcp, ws, proc}.
async function startServer({ extra = [], allowOrigins = [] } = {}) {
  const args = ['--bind', '127.0.0.1', '--port', '0', '--ws-port', '0', '--rate', '0', ...extra];
  for (const o of allowOrigins) args.push('--ws-allow-origin', o);
  const proc = new Proc(chatServer, args, 'chat_server');
  started.push(proc);
  const portOf = (l) => Number(l.match(/listening on \S+:(\d+)/)[1]);
  const isWs = (l) => /listening on \S+:\d+/.test(l) && /websocket/i.test(l) && !/tls|wss/i.test(l);
  const isTcp = (l) => /listening on [^\s:]+:\d+\s*$/.test(l);
  const tcp = portOf(await proc.waitLine(isTcp, 10000, 'listening on ADDRESS:PORT'));
  const ws = portOf(await proc.waitLine(isWs, 10000, 'listening ... (websocket ...)'));
  return { tcp, ws, proc };
}

// chat_client in script mode with --json; {proc, messages(room)}.
function startClient(port, nick, room = 'lobby', extra = []) {
  const proc = new Proc(chatClient, ['--host', '127.0.0.1', '--port', String(port), '--nick', nick, '--room', room, '--json', ...extra], `chat_client ${nick}`);
  started.push(proc);
  const events = () => proc.lines.filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
  return {
    proc,
    events,
    messages: (r = room) => events().filter((e) => e.type === 'message' && e.room === r),
    waitEvent: (pred, ms, what) => proc.waitLine((l) => l.startsWith('{') && pred(JSON.parse(l)), ms, what),
  };
}

// --- the browser -------------------------------------------------------------------

let browser;
before(async () => {
  browser = await puppeteer.launch({
    executablePath: chromium,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run'],
  });
});
after(async () => {
  await browser?.close();
  await Promise.all(started.map((p) => p.stop()));
});

// A page with its console errors and page errors kept (a CSP violation is one).
async function openPage(url, { width = 1000, height = 600 } = {}) {
  const page = await browser.newPage();
  await page.setViewport({ width, height });
  page.problems = [];
  page.on('pageerror', (e) => page.problems.push(`pageerror: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') page.problems.push(`console: ${m.text()}`); });
  await page.goto(url, { waitUntil: 'load' });
  return page;
}

const pageUrl = (port, params, host = '127.0.0.1') => `http://${host}:${port}/?${new URLSearchParams(params)}`;

async function waitState(page, state, ms = 10000) {
  try {
    await page.waitForFunction((s) => document.getElementById('status').dataset.state === s, { timeout: ms, polling: 25 }, state);
  } catch (e) {
    const now = await page.evaluate(() => `${document.getElementById('status').dataset.state}: ${document.getElementById('status').textContent}`);
    throw new Error(`status did not become '${state}' within ${ms} ms; it is ${now}`);
  }
}

// The chat lines of a room: [{seq, epoch, nick, text, history}].
function pageMessages(page, room = 'lobby') {
  return page.evaluate((r) => [...document.querySelectorAll('li.msg')].filter((li) => li.dataset.room === r).map((li) => ({
    seq: Number(li.dataset.seq), epoch: li.dataset.epoch, nick: li.dataset.nick,
    text: li.querySelector('.text').textContent, history: li.dataset.history === '1',
  })), room);
}

async function waitMessages(page, count, room = 'lobby', ms = 10000) {
  await page.waitForFunction((r, n) => [...document.querySelectorAll('li.msg')].filter((li) => li.dataset.room === r).length >= n,
    { timeout: ms, polling: 50 }, room, count).catch(async () => {
    throw new Error(`fewer than ${count} messages in #${room} within ${ms} ms: ${JSON.stringify(await pageMessages(page, room))}`);
  });
}

async function waitText(page, selector, text, ms = 10000) {
  await page.waitForFunction((s, t) => [...document.querySelectorAll(s)].some((e) => e.textContent.includes(t)),
    { timeout: ms, polling: 25 }, selector, text).catch(async () => {
    const all = await page.evaluate((s) => [...document.querySelectorAll(s)].map((e) => e.textContent), selector);
    throw new Error(`no '${selector}' with "${text}" within ${ms} ms; there are: ${JSON.stringify(all.slice(-12))}`);
  });
}

// Types a line into the input and presses Enter, as a person would.
async function say(page, text) {
  await page.focus('#line');
  await page.keyboard.type(text);
  await page.keyboard.press('Enter');
}

// `allowLost`: Chromium's console errors about a WebSocket it gave up on
// ("WebSocket connection to ... failed: ...") are expected where the test kills
// connections; they are printed, not failed on. (Also where a page closed its
// connection: chat_server sometimes sends a binary message after its Close frame
// there, "Data frame received after close", which Chromium logs.)
function noProblems(page, { allowLost = false } = {}) {
  const lost = (p) => allowLost && /^console: WebSocket connection to '[^']*' failed/.test(p);
  for (const p of page.problems.filter(lost)) console.log(`# (expected here) ${p}`);
  assert.deepEqual(page.problems.filter((p) => !lost(p)), [], 'no page errors, console errors or CSP violations');
}

// --- the tests ---------------------------------------------------------------------

test('two pages and a chat_client in one room see every message in one order', { timeout: 60000 }, async () => {
  const server = await startServer();
  const alice = await openPage(pageUrl(server.ws, { nick: 'alice', room: 'lobby', autoconnect: '1' }));
  const bob = await openPage(pageUrl(server.ws, { nick: 'bob', room: 'lobby', autoconnect: '1' }));
  await waitState(alice, 'connected');
  await waitState(bob, 'connected');
  const carol = startClient(server.tcp, 'carol');
  await carol.waitEvent((e) => e.type === 'joined', 10000, 'joined');
  // Presence: alice's member list shows all three once carol is in.
  await alice.waitForFunction(() => ['alice', 'bob', 'carol'].every((n) => document.querySelector(`#member-list li[data-nick="${n}"]`)),
    { timeout: 10000, polling: 50 });
  await waitText(alice, 'li.presence', 'carol joined');

  const per = 5;
  carol.proc.write(Array.from({ length: per }, (_, i) => `c${i + 1}\n`).join(''));
  for (let i = 1; i <= per; i++) {
    await say(alice, `a${i}`);
    await say(bob, `b${i}`);
  }
  const total = 3 * per;
  await waitMessages(alice, total);
  await waitMessages(bob, total);
  await carol.waitEvent(() => carol.messages().length >= total, 10000, `${total} messages`).catch(() => {});
  const key = (m) => `${m.seq} ${m.nick} ${m.text}`;
  const atAlice = (await pageMessages(alice)).map(key);
  const atBob = (await pageMessages(bob)).map(key);
  const atCarol = carol.messages().map(key);
  assert.equal(atAlice.length, total);
  assert.deepEqual(atBob, atAlice, 'bob sees what alice sees, in the same order');
  assert.deepEqual(atCarol, atAlice, 'chat_client sees what the pages see, in the same order');
  const seqs = atAlice.map((k) => Number(k.split(' ')[0]));
  assert.deepEqual([...seqs].sort((x, y) => x - y), seqs, 'in increasing seq order');
  for (const who of ['a', 'b', 'c']) {
    const own = atAlice.map((k) => k.split(' ')[2]).filter((t) => t.startsWith(who));
    assert.deepEqual(own, Array.from({ length: per }, (_, i) => `${who}${i + 1}`), `${who}'s messages in the order sent`);
  }
  noProblems(alice);
  noProblems(bob);
  await alice.close();
  await bob.close();
  await server.proc.stop();
});

test('a SIGSTOPped server is reported within its heartbeat timeout; after SIGCONT no message is lost', { timeout: 60000 }, async () => {
  const intervalMs = 250;
  const timeoutMs = 1500;
  const server = await startServer({ extra: ['--heartbeat-interval', `${intervalMs}ms`, '--heartbeat-timeout', `${timeoutMs}ms`] });
  const alice = await openPage(pageUrl(server.ws, { nick: 'alice', room: 'lobby', autoconnect: '1' }));
  await waitState(alice, 'connected');
  const bob = startClient(server.tcp, 'bob', 'lobby', ['--reconnect-max', '300ms']);
  await bob.waitEvent((e) => e.type === 'joined', 10000, 'joined');
  bob.proc.write('before1\nbefore2\nbefore3\n');
  await waitMessages(alice, 3);
  // Let the page go quiet for a moment so that only heartbeats flow.
  await sleep(intervalMs);

  const stoppedAt = Date.now();
  server.proc.signal('SIGSTOP');
  bob.proc.write('during1\nduring2\n');
  // The status line changes at once to the reconnect countdown; the log keeps the line.
  await waitText(alice, 'li.status-warn', 'server not responding', timeoutMs * 3);
  const noticed = Date.now() - stoppedAt;
  const status = await alice.$eval('#status', (e) => e.textContent);
  assert.match(status, /server not responding/, 'the status line says so while the page reconnects');
  console.log(`# the page reported the stopped server after ${noticed} ms (heartbeat timeout ${timeoutMs} ms, interval ${intervalMs} ms)`);
  // Silence starts at the server's last frame, at most one interval before the stop.
  assert.ok(noticed >= timeoutMs - intervalMs - 150, `not before the timeout (${noticed} ms)`);
  assert.ok(noticed <= timeoutMs + timeoutMs / 2, `within the heartbeat timeout + 50% (${noticed} ms)`);
  // It keeps trying meanwhile.
  await waitState(alice, 'reconnecting', 5000).catch(() => waitState(alice, 'connecting', 1000));
  server.proc.signal('SIGCONT');

  await waitState(alice, 'connected', 15000);
  await waitText(alice, 'li.joined', 'rejoined', 10000);
  bob.proc.write('after1\nafter2\nafter3\n');
  const texts = ['before1', 'before2', 'before3', 'during1', 'during2', 'after1', 'after2', 'after3'];
  await alice.waitForFunction((want) => {
    const have = new Set([...document.querySelectorAll('li.msg .text')].map((e) => e.textContent));
    return want.every((t) => have.has(t));
  }, { timeout: 20000, polling: 50 }, texts).catch(async () => {
    throw new Error(`not every message reached the page: ${JSON.stringify(await pageMessages(alice))}`);
  });
  const seen = await pageMessages(alice);
  // Per epoch (a room made anew after everyone left has a new one), every
  // position once, dense from 1: the in-process broker numbers densely, so a
  // gap is a lost message.
  const epochs = new Map();
  for (const m of seen) {
    if (!epochs.has(m.epoch)) epochs.set(m.epoch, []);
    epochs.get(m.epoch).push(m.seq);
  }
  for (const [epoch, seqs] of epochs) {
    assert.deepEqual(seqs, Array.from({ length: seqs.length }, (_, i) => i + 1), `epoch ${epoch}: seqs 1..n, each once, in order`);
  }
  if (epochs.size > 1) {
    await waitText(alice, 'li.joined', 'started anew', 1000);
    console.log('# the room was made anew while the server was stopped (an epoch change, told on the page)');
  }
  noProblems(alice, { allowLost: true });
  await alice.close();
  await server.proc.stop();
});

// Serves web/ from a port of its own (another origin than the server's ws port).
function serveCopy() {
  const types = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css' };
  const srv = http.createServer((req, res) => {
    let p = new URL(req.url, 'http://x').pathname;
    if (p === '/') p = '/index.html';
    const file = join(webDir, p);
    if (!file.startsWith(webDir) || !existsSync(file)) { res.writeHead(404); res.end(); return; }
    res.writeHead(200, { 'Content-Type': types[extname(file)] ?? 'application/octet-stream' });
    res.end(readFileSync(file));
  });
  return new Promise((res) => srv.listen(0, '127.0.0.1', () => res(srv)));
}

test('pages from another origin are refused and say so; the server\'s own page is not', { timeout: 60000 }, async () => {
  const server = await startServer();
  // The same files from another port: another origin, refused by default.
  const copy = await serveCopy();
  const foreign = await openPage(`http://127.0.0.1:${copy.address().port}/?${new URLSearchParams({
    nick: 'mallory', room: 'lobby', autoconnect: '1', ws: `ws://127.0.0.1:${server.ws}/ws` })}`);
  await waitState(foreign, 'refused');
  const text = await foreign.$eval('#status', (e) => e.textContent);
  assert.match(text, /refused this page/);
  assert.match(text, /--ws-allow-origin/);
  assert.ok(!(await foreign.$eval('#connect-form', (e) => e.hidden)), 'the connect form is offered again');
  await foreign.close();
  copy.close();
  // The server's own page under another host name is its own origin: accepted.
  const own = await openPage(pageUrl(server.ws, { nick: 'alice', room: 'lobby', autoconnect: '1' }, 'localhost'));
  await waitState(own, 'connected');
  noProblems(own);
  await own.close();
  await server.proc.stop();

  // With an allow-list, only the origins listed: even the server's own page is refused.
  const listed = await startServer({ allowOrigins: ['http://allowed.invalid'] });
  const page = await openPage(pageUrl(listed.ws, { nick: 'alice', room: 'lobby', autoconnect: '1' }));
  await waitState(page, 'refused');
  assert.match(await page.$eval('#status', (e) => e.textContent), /server is up but refused this page's WebSocket connection/);
  await page.close();
  await listed.proc.stop();
});

test('text from others is shown as text, never as markup', { timeout: 60000 }, async () => {
  const server = await startServer();
  const alice = await openPage(pageUrl(server.ws, { nick: 'alice', room: 'lobby', autoconnect: '1' }));
  await waitState(alice, 'connected');
  const bob = startClient(server.tcp, 'bob');
  await bob.waitEvent((e) => e.type === 'joined', 10000, 'joined');
  const evil = ['<img src=x onerror="document.title=\'pwned\'">', '<b>bold</b> &amp; <script>document.title="pwned"</script>'];
  bob.proc.write(evil.map((t) => `${t}\n`).join(''));
  bob.proc.write('/msg alice <i>whispered</i>\n');
  await waitMessages(alice, evil.length);
  await waitText(alice, 'li.whisper .text', '<i>whispered</i>');
  const shown = (await pageMessages(alice)).map((m) => m.text);
  assert.deepEqual(shown, evil);
  const injected = await alice.evaluate(() => document.querySelectorAll('#panels img, #panels b, #panels i, #panels script').length);
  assert.equal(injected, 0, 'no element made from message text');
  assert.notEqual(await alice.title(), 'pwned');
  noProblems(alice);
  await alice.close();
  await server.proc.stop();
});

test('rooms as tabs by keyboard, whispers, /nick, /who, /leave, and a narrow screen', { timeout: 60000 }, async () => {
  const server = await startServer();
  const alice = await openPage(pageUrl(server.ws, { nick: 'alice', room: 'lobby', autoconnect: '1' }));
  const bob = await openPage(pageUrl(server.ws, { nick: 'bob', room: 'lobby', autoconnect: '1' }));
  await waitState(alice, 'connected');
  await waitState(bob, 'connected');
  assert.equal(await alice.evaluate(() => document.activeElement.id), 'line', 'the input has the focus');

  await say(alice, 'hi bob, the release is tonight');
  await say(bob, 'great: shall we move to #dev?');
  await say(alice, '/join dev');
  await say(bob, '/join dev');
  await waitText(alice, 'li.presence', 'bob joined');
  await say(bob, 'build is green on main');
  await say(alice, 'tagging v0.2 in five minutes');
  await waitMessages(alice, 2, 'dev');
  await say(bob, '/msg alice can you review my PR first?');
  await waitText(alice, 'li.whisper', 'can you review my PR first?');
  await say(alice, '/who');
  await waitText(alice, 'li.info', '** #dev: ');
  // A message in a room in the background: its tab counts it as unread.
  await say(bob, '/switch lobby');
  await say(bob, 'lunch at noon, anyone?');
  await say(bob, '/switch dev');
  await alice.waitForFunction(() => document.querySelector('[role="tab"][data-room="lobby"] .unread').textContent === '1',
    { timeout: 10000, polling: 50 });

  if (process.env.PULSECHAT_SCREENSHOT) {
    await alice.bringToFront();  // a background tab is never painted: its screenshot would wait forever
    await alice.evaluate(() => document.activeElement.blur());
    await alice.screenshot({ path: process.env.PULSECHAT_SCREENSHOT });
    console.log(`# screenshot: ${process.env.PULSECHAT_SCREENSHOT}`);
  }

  // Tabs: two, #dev selected; Alt+1 picks #lobby, and arrow keys move along the tablist.
  const tabs = () => alice.$$eval('[role="tab"]', (ts) => ts.map((t) => `${t.dataset.room}:${t.getAttribute('aria-selected')}`));
  assert.deepEqual(await tabs(), ['lobby:false', 'dev:true']);
  await alice.keyboard.down('Alt');
  await alice.keyboard.press('1');
  await alice.keyboard.up('Alt');
  assert.deepEqual(await tabs(), ['lobby:true', 'dev:false']);
  assert.ok(await alice.$eval('[role="tab"][data-room="lobby"]', (t) => !document.getElementById(t.getAttribute('aria-controls')).hidden));
  await alice.focus('[role="tab"][data-room="lobby"]');
  await alice.keyboard.press('ArrowRight');
  assert.deepEqual(await tabs(), ['lobby:false', 'dev:true']);
  assert.equal(await alice.evaluate(() => document.activeElement.dataset.room), 'dev');
  await alice.keyboard.press('Escape');
  assert.equal(await alice.evaluate(() => document.activeElement.id), 'line');

  assert.equal(await alice.$eval('[role="tab"][data-room="lobby"] .unread', (e) => e.textContent), '', 'seen: no longer unread');

  // /nick: alice's own confirmation, bob's presence line and member list.
  await say(alice, '/nick alicia');
  await waitText(alice, 'li.line', 'you are now known as alicia');
  await waitText(bob, 'li.presence', 'alice is now known as alicia');
  await bob.waitForFunction(() => document.querySelector('#member-list li[data-nick="alicia"]'), { timeout: 10000, polling: 50 });
  await say(alice, '/leave');
  await alice.waitForFunction(() => document.querySelectorAll('[role="tab"]').length === 1, { timeout: 10000, polling: 50 });
  await waitText(bob, 'li.presence', 'alicia left');
  await say(alice, '/bogus');
  await waitText(alice, 'li.error', "unknown command '/bogus'");
  // /quit: the others are told, the form is offered again, and the keyboard alone logs in again.
  await say(alice, '/quit');
  await waitState(alice, 'disconnected');
  await waitText(bob, 'li.presence', 'alicia disconnected');
  assert.ok(!(await alice.$eval('#connect-form', (e) => e.hidden)));
  await alice.focus('#connect-nick');
  await alice.keyboard.press('Enter');
  await waitState(alice, 'connected');
  await waitText(bob, 'li.presence', 'alice joined');
  assert.equal(await alice.evaluate(() => document.activeElement.id), 'line', 'the input has the focus again');

  // A 360 px phone screen: no horizontal scrolling, the member list folded behind its button.
  await bob.bringToFront();
  await bob.setViewport({ width: 360, height: 640 });
  const narrow = await bob.evaluate(() => ({
    overflow: document.documentElement.scrollWidth > window.innerWidth,
    members: getComputedStyle(document.getElementById('members')).display,
    toggle: getComputedStyle(document.getElementById('toggle-members')).display !== 'none',
  }));
  assert.deepEqual(narrow, { overflow: false, members: 'none', toggle: true });
  await bob.click('#toggle-members');
  assert.notEqual(await bob.$eval('#members', (e) => getComputedStyle(e).display), 'none');
  noProblems(alice, { allowLost: true });  // (it quit once: see noProblems)
  noProblems(bob);
  await alice.close();
  await bob.close();
  await server.proc.stop();
});
