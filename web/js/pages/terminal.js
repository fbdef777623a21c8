// @ts-check
// The shell page: waits for consent (live, through the events socket), then
// bridges xterm.js to the terminal WebSocket. Everything from the session is
// shown with textContent; terminal bytes go only to xterm.js.
import { Terminal } from "/node_modules/@xterm/xterm/lib/xterm.mjs";
import { FitAddon } from "/node_modules/@xterm/addon-fit/lib/addon-fit.mjs";
import { $ } from "../lib/dom.js";
import { chatEvent, refitOnToggle, showExtras, wireChatAndNotes } from "../lib/session-extras.js";
import { runSessionPage, socketUrl } from "../lib/session-page.js";

let opened = false;

const page = runSessionPage({
  kind: "shell",
  active(session) {
    showExtras(session);
    $("notice").hidden = true;
    if (opened) return;
    opened = true;
    openTerminal();
  },
  event: chatEvent,
});
wireChatAndNotes();
refitOnToggle();

function openTerminal() {
  $("screen").hidden = false;
  // A steady cursor (xterm.js's default): the DOM renderer blinks it with a CSS
  // animation, and a page that animates draws a frame every 16.7 ms; Chromium holds
  // the echo of a key until the frame that answers the key is drawn, so every echo
  // waited for the next frame as well (docs/benchmarks.md §7e).
  const terminal = new Terminal({ cursorBlink: false, convertEol: false, scrollback: 5000,
    fontFamily: "ui-monospace, 'DejaVu Sans Mono', monospace", fontSize: 14 });
  // OSC 52 would let the PC write to the technician's clipboard: swallow it.
  terminal.parser.registerOscHandler(52, () => true);
  const fit = new FitAddon();
  terminal.loadAddon(fit);
  terminal.open($("screen"));
  fit.fit();
  const socket = new WebSocket(socketUrl("terminal", `?cols=${terminal.cols}&rows=${terminal.rows}`));
  socket.binaryType = "arraybuffer";
  const encoder = new TextEncoder();
  /** @param {string | Uint8Array<ArrayBuffer>} data */
  const send = (data) => {
    if (socket.readyState === WebSocket.OPEN) socket.send(data);
  };
  socket.onmessage = (event) => {
    if (event.data instanceof ArrayBuffer) terminal.write(new Uint8Array(event.data));
  };
  socket.onclose = (event) => {
    terminal.options.disableStdin = true;
    terminal.write(`\r\n\x1b[2m[${event.reason || "connection closed"}]\x1b[0m\r\n`);
    page.refresh();
  };
  terminal.onData((data) => send(encoder.encode(data)));
  terminal.onBinary((data) => send(Uint8Array.from(data, (c) => c.charCodeAt(0) & 0xff)));
  terminal.onResize(({ cols, rows }) => send(JSON.stringify({ type: "resize", cols, rows })));
  window.addEventListener("resize", () => fit.fit());
  terminal.focus();
}
