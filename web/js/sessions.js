// Sessions: a technician's own (admins: everyone's), updated as people answer.
"use strict";

import { api } from "./api.js";
import { $, badge, button, confirmAction, el, showEmpty, timeCell, toast } from "./dom.js";
import { isAdmin, sessionPage, state } from "./state.js";

const LIVE = new Set(["requested", "awaiting_consent", "active"]);
const STATE_TEXT = {
  requested: ["Requested", "wait"],
  awaiting_consent: ["Waiting for consent", "wait"],
  active: ["Active", "ok"],
  ended: ["Ended", "off"],
  denied: ["Denied", "bad"],
  expired: ["No answer", "off"],
};

export async function loadSessions() {
  const rows = await api("GET", "/api/v1/sessions");
  state.sessions = new Map(rows.map((session) => [session.id, session]));
}

export function sessionChanged(session) {
  if (!session || typeof session.id !== "string") return null;
  const before = state.sessions.get(session.id);
  state.sessions.set(session.id, session);
  return before ? before.state : null;
}

export function renderSessions() {
  const admin = isAdmin();
  $("sessions-title").textContent = admin ? "Sessions" : "My sessions";
  $("nav-sessions").textContent = admin ? "Sessions" : "My sessions";
  $("sessions-note").textContent = admin
    ? "Every technician's requests and sessions. They update as people answer."
    : "Requests you sent and sessions you ran. They update as people answer.";
  document.body.classList.toggle("is-admin", admin);
  const rows = [...state.sessions.values()].sort((a, b) => b.created - a.created);
  $("sessions-rows").replaceChildren(...rows.map(row));
  showEmpty("sessions-empty", rows.length === 0);
}

function row(session) {
  const [label, kind] = STATE_TEXT[session.state] || [String(session.state), "off"];
  const what = session.kind === "screen" ? (session.view_only ? "Screen (view only)" : "Screen") : "Shell";
  const live = LIVE.has(session.state);
  const mine = state.me && session.technician === state.me.username;
  return el("tr", { cls: live ? "" : "dim" }, [
    el("td", {}, [badge(label, kind)]),
    el("td", { cls: "host", text: session.hostname || session.agent_id }),
    el("td", { text: what }),
    el("td", { cls: "message", text: session.reason }),
    el("td", { cls: "phrase-cell", text: session.phrase || "—" }),
    el("td", { cls: "admin-col", text: session.technician }),
    timeCell(session.created),
    el("td", { cls: "nowrap", text: session.ended ? endText(session) : "—" }),
    el("td", { cls: "actions" }, [
      live && mine
        ? el("a", {
          cls: "button small", text: "Open",
          attrs: { href: sessionPage(session) },
        })
        : null,
      live ? button("End", () => end(session), "small ghost danger-text") : null,
    ]),
  ]);
}

function endText(session) {
  const reasons = {
    technician: "by technician", user: "by the user", agent_lost: "PC went offline",
    broker_restart: "broker restarted", error: "error", expired: "no answer",
  };
  return reasons[session.end_reason] || session.end_reason || "";
}

async function end(session) {
  const sure = await confirmAction(
    `End the session on ${session.hostname || session.agent_id}?`,
    "The connection closes at once for you and for the person at the PC.",
    "End session",
  );
  if (!sure) return;
  try {
    const ended = await api("POST", `/api/v1/sessions/${encodeURIComponent(session.id)}/end`);
    state.sessions.set(ended.id, ended);
    renderSessions();
  } catch (error) {
    toast(error.message, "error");
  }
}
