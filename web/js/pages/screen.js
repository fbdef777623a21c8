// @ts-check
// The screen page: waits for consent (live, through the events socket), then
// shows the PC's screen with noVNC over the screen WebSocket. Everything the PC
// or the broker says reaches the page as text (textContent), the desktop name
// included: the PC is hostile input.
import RFB from "/node_modules/@novnc/novnc/core/rfb.js";
import { $, plain } from "../lib/dom.js";
import { t } from "../lib/i18n.js";
import { chatEvent, refitOnToggle, showExtras, wireChatAndNotes } from "../lib/session-extras.js";
import { runSessionPage, socketUrl } from "../lib/session-page.js";

/** @type {RFB | null} */
let rfb = null;
/** @type {{code: number, reason: string} | null} the screen socket's close, once it closed */
let closed = null;

function failure() {
  const why = closed && closed.code !== 1000 && closed.reason ? plain(closed.reason, 200) : "";
  return why ? `The screen could not be shown: ${why}.` : "";
}

const page = runSessionPage({
  kind: "screen",
  active(session) {
    showExtras(session);
    $("view-only").hidden = !session.view_only;
    if (closed) return;
    $("notice").hidden = true;
    openScreen(Boolean(session.view_only));
  },
  over() {
    $("view-only").hidden = true;
    $("clipboard").hidden = true;
  },
  failure,
  ended() {
    if (rfb) rfb.disconnect();
  },
  event: chatEvent,
});
wireChatAndNotes();
refitOnToggle();

/** @param {boolean} viewOnly */
function openScreen(viewOnly) {
  if (rfb) return;
  $("screen").hidden = false;
  const socket = new WebSocket(socketUrl("screen"), ["binary"]);
  // Registered before noVNC's own handler: the close reason says why a screen failed.
  socket.addEventListener("close", (event) => { closed = { code: event.code, reason: event.reason }; });
  const screen = new RFB($("screen"), socket, { shared: false });
  rfb = screen;
  screen.scaleViewport = true;
  screen.resizeSession = false;
  screen.viewOnly = viewOnly;
  screen.focusOnClick = !viewOnly;
  screen.addEventListener("connect", () => {
    document.body.dataset.screen = "connected";
    $("state").textContent = viewOnly ? "watching (view only)" : "connected";
    $("clipboard").hidden = viewOnly;
    if (!viewOnly) screen.focus();
  });
  screen.addEventListener("disconnect", () => {
    document.body.dataset.screen = "disconnected";
    $("clipboard").hidden = true;
    $("screen").hidden = true;
    $("notice").hidden = false;
    $("message").textContent = failure() || t("page.screen_closed");
    page.refresh();
  });
  screen.addEventListener("desktopname", (event) => {
    $("desktop-name").textContent = plain(event.detail.name, 200);
  });
  screen.addEventListener("clipboard", (event) => {
    if (!viewOnly) $("clip", HTMLTextAreaElement).value = String(event.detail.text ?? "").slice(0, 256 * 1024);
  });
  screen.addEventListener("securityfailure", (event) => {
    closed = { code: 1008, reason: plain(event.detail.reason || "the PC refused the viewer", 200) };
  });
}

$("clip-send").addEventListener("click", () => {
  const session = page.current();
  if (rfb && session && session.state === "active" && !session.view_only) {
    rfb.clipboardPasteFrom($("clip", HTMLTextAreaElement).value);
  }
});
