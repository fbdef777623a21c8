// The screen page: waits for consent (live, through the events socket, with a
// slow poll as a fallback), then shows the PC's screen with noVNC over the
// screen WebSocket. Everything the PC or the broker says reaches the page as
// text (textContent), the desktop name included: the PC is hostile input.
import RFB from "/node_modules/@novnc/novnc/core/rfb.js";
import { $, OVER, WORDS, api, sessionId, wsBase } from "/session-common.js";

let current = null;
let rfb = null;
let closed = null; // {code, reason} of the screen socket, once it closed
let eventsOpen = false;
let poller = null;

// Hostile text made plain: no control or bidi characters, bounded.
function plain(text, limit) {
  return String(text ?? "").replace(/\p{C}/gu, "").trim().slice(0, limit);
}

function failure() {
  return closed && closed.code !== 1000 && closed.reason ? plain(closed.reason, 200) : "";
}

function overMessage(session) {
  if (session.state === "denied") return "The user denied the request.";
  if (session.state === "expired") return "The user did not answer in time; the request expired.";
  const why = failure();
  if (why) return `The screen could not be shown: ${why}.`;
  const reason = session.end_reason ? ` (${session.end_reason.replace("_", " ")})` : "";
  return `The session has ended${reason}.`;
}

function show(session) {
  current = session;
  $("host").textContent = `${plain(session.hostname, 100)} — screen`;
  const state = $("state");
  state.textContent = WORDS[session.state] || plain(session.state, 40);
  state.className = "state " + (session.state === "active" ? "active"
    : OVER.includes(session.state) ? "over" : "");
  $("phrase").textContent = plain(session.phrase, 100);
  $("phrase-line").hidden = session.state !== "awaiting_consent";
  $("end").disabled = !["awaiting_consent", "active"].includes(session.state);
  $("view-only").hidden = !(session.state === "active" && session.view_only);
  if (session.state === "awaiting_consent") {
    $("message").textContent =
      `Waiting for the person at ${plain(session.hostname, 100)} to click “Allow help”.`;
  } else if (session.state === "active" && !closed) {
    $("notice").hidden = true;
    openScreen(Boolean(session.view_only));
  } else if (OVER.includes(session.state)) {
    $("notice").hidden = false;
    $("message").textContent = overMessage(session);
    $("clipboard").hidden = true;
    stopPolling();
  }
}

function openScreen(viewOnly) {
  if (rfb) return;
  $("screen").hidden = false;
  const url = `${wsBase}/sessions/${encodeURIComponent(sessionId)}/screen`;
  const socket = new WebSocket(url, ["binary"]);
  // Registered before noVNC's own handler: the close reason says why a screen failed.
  socket.addEventListener("close", (event) => { closed = { code: event.code, reason: event.reason }; });
  rfb = new RFB($("screen"), socket, { shared: false });
  rfb.scaleViewport = true;
  rfb.resizeSession = false;
  rfb.viewOnly = viewOnly;
  rfb.focusOnClick = !viewOnly;
  rfb.addEventListener("connect", () => {
    document.body.dataset.screen = "connected";
    $("state").textContent = viewOnly ? "watching (view only)" : "connected";
    $("clipboard").hidden = viewOnly;
    if (!viewOnly) rfb.focus();
  });
  rfb.addEventListener("disconnect", () => {
    document.body.dataset.screen = "disconnected";
    $("clipboard").hidden = true;
    $("screen").hidden = true;
    $("notice").hidden = false;
    $("message").textContent = failure()
      ? `The screen could not be shown: ${failure()}.` : "The screen connection closed.";
    refresh();
  });
  rfb.addEventListener("desktopname", (event) => {
    $("desktop-name").textContent = plain(event.detail.name, 200);
  });
  rfb.addEventListener("clipboard", (event) => {
    if (!viewOnly) $("clip").value = String(event.detail.text ?? "").slice(0, 256 * 1024);
  });
  rfb.addEventListener("securityfailure", (event) => {
    closed = { code: 1008, reason: plain(event.detail.reason || "the PC refused the viewer", 200) };
  });
}

async function refresh() {
  try {
    show(await api("GET", `/api/v1/sessions/${encodeURIComponent(sessionId)}`));
  } catch (error) {
    $("message").textContent = `Cannot load the session: ${error.message}`;
  }
}

function waiting() {
  return !current || ["requested", "awaiting_consent"].includes(current.state);
}

// The events socket is the live path; while it is down and we wait, poll each second.
function startPolling() {
  if (!poller) poller = setInterval(() => { if (!eventsOpen && waiting()) refresh(); }, 1000);
}

function stopPolling() {
  if (poller) clearInterval(poller);
  poller = null;
}

function listen() {
  const events = new WebSocket(`${wsBase}/events`);
  events.onopen = () => { eventsOpen = true; refresh(); };
  events.onmessage = (event) => {
    let data;
    try { data = JSON.parse(event.data); } catch { return; }
    if (data.type === "session" && data.session && data.session.id === sessionId) show(data.session);
  };
  events.onclose = () => {
    eventsOpen = false;
    if (!current || !OVER.includes(current.state)) setTimeout(listen, 2000);
  };
}

$("end").addEventListener("click", async () => {
  $("end").disabled = true;
  try {
    show(await api("POST", `/api/v1/sessions/${encodeURIComponent(sessionId)}/end`));
  } catch (error) {
    $("message").textContent = error.message;
    refresh();
  }
  if (rfb) rfb.disconnect();
});

$("clip-send").addEventListener("click", () => {
  if (rfb && current && current.state === "active" && !current.view_only) {
    rfb.clipboardPasteFrom($("clip").value);
  }
});

listen();
startPolling();
refresh();
