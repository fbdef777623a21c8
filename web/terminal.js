// The shell page: waits for consent (live, through the events socket), then
// bridges xterm.js to the terminal WebSocket. Everything from the session is
// shown with textContent; terminal bytes go only to xterm.js.
import { Terminal } from "/node_modules/@xterm/xterm/lib/xterm.mjs";
import { FitAddon } from "/node_modules/@xterm/addon-fit/lib/addon-fit.mjs";
import { $, OVER, WORDS, api, sessionId, wsBase } from "/session-common.js";

let terminal = null;
let socket = null;
let current = null;

function show(session) {
  current = session;
  $("host").textContent = `${session.hostname} — shell`;
  const state = $("state");
  state.textContent = WORDS[session.state] || session.state;
  state.className = "state " + (session.state === "active" ? "active"
    : OVER.includes(session.state) ? "over" : "");
  $("phrase").textContent = session.phrase;
  $("phrase-line").hidden = session.state !== "awaiting_consent";
  $("end").disabled = !["awaiting_consent", "active"].includes(session.state);
  if (session.state === "awaiting_consent") {
    $("message").textContent = `Waiting for the person at ${session.hostname} to click “Allow help”.`;
  } else if (session.state === "active") {
    $("notice").hidden = true;
    openTerminal();
  } else if (OVER.includes(session.state)) {
    $("notice").hidden = false;
    const reason = session.end_reason ? ` (${session.end_reason.replace("_", " ")})` : "";
    $("message").textContent = session.state === "denied"
      ? "The user denied the request."
      : session.state === "expired"
        ? "The user did not answer in time; the request expired."
        : `The session has ended${reason}.`;
  }
}

function openTerminal() {
  if (terminal) return;
  $("screen").hidden = false;
  terminal = new Terminal({ cursorBlink: true, convertEol: false, scrollback: 5000,
    fontFamily: "ui-monospace, 'DejaVu Sans Mono', monospace", fontSize: 14 });
  // OSC 52 would let the PC write to the technician's clipboard: swallow it.
  terminal.parser.registerOscHandler(52, () => true);
  const fit = new FitAddon();
  terminal.loadAddon(fit);
  terminal.open($("screen"));
  fit.fit();
  const url = `${wsBase}/sessions/${encodeURIComponent(sessionId)}/terminal`
    + `?cols=${terminal.cols}&rows=${terminal.rows}`;
  socket = new WebSocket(url);
  socket.binaryType = "arraybuffer";
  const encoder = new TextEncoder();
  socket.onmessage = (event) => {
    if (event.data instanceof ArrayBuffer) terminal.write(new Uint8Array(event.data));
  };
  socket.onclose = (event) => {
    terminal.options.disableStdin = true;
    terminal.write(`\r\n\x1b[2m[${event.reason || "connection closed"}]\x1b[0m\r\n`);
    refresh();
  };
  terminal.onData((data) => socket.readyState === 1 && socket.send(encoder.encode(data)));
  terminal.onBinary((data) => {
    const bytes = Uint8Array.from(data, (c) => c.charCodeAt(0) & 0xff);
    if (socket.readyState === 1) socket.send(bytes);
  });
  terminal.onResize(({ cols, rows }) => {
    if (socket.readyState === 1) socket.send(JSON.stringify({ type: "resize", cols, rows }));
  });
  window.addEventListener("resize", () => fit.fit());
  terminal.focus();
}

async function refresh() {
  try {
    show(await api("GET", `/api/v1/sessions/${encodeURIComponent(sessionId)}`));
  } catch (error) {
    $("message").textContent = `Cannot load the session: ${error.message}`;
  }
}

function listen() {
  const events = new WebSocket(`${wsBase}/events`);
  events.onmessage = (event) => {
    let data;
    try { data = JSON.parse(event.data); } catch { return; }
    if (data.type === "session" && data.session && data.session.id === sessionId) show(data.session);
  };
  events.onclose = () => {
    if (!current || ["requested", "awaiting_consent", "active"].includes(current.state)) {
      setTimeout(() => { refresh(); listen(); }, 2000);
    }
  };
}

$("end").addEventListener("click", async () => {
  $("end").disabled = true;
  try { show(await api("POST", `/api/v1/sessions/${encodeURIComponent(sessionId)}/end`)); }
  catch (error) { $("message").textContent = error.message; }
});

listen();
refresh();
