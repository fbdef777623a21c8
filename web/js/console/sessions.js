// @ts-check
// Sessions: a technician's own (admins: everyone's), updated as people answer.

import { api, errorMessage } from "../lib/api.js";
import { $, badge, button, confirmAction, el, showEmpty, timeCell, toast } from "../lib/dom.js";
import { kindLabel, reasonWords, sessionPage, stateWords } from "../lib/session-states.js";
import { t } from "../lib/i18n.js";
import { isAdmin, state } from "./state.js";

/** @typedef {import("../lib/session-states.js").Session} Session */

/** The kinds whose sessions are recorded (the broker records every one of them). */
const RECORDED = new Set(["shell", "admin-shell", "screen"]);

export async function loadSessions() {
  /** @type {Session[]} */
  const rows = await api("GET", "/api/v1/sessions");
  state.sessions = new Map(rows.map((session) => [session.id, session]));
}

/**
 * @param {Session | null | undefined} session as the live feed reports it
 * @returns {string | null} its state before, if the console knew it
 */
export function sessionChanged(session) {
  if (!session || typeof session.id !== "string") return null;
  const before = state.sessions.get(session.id);
  state.sessions.set(session.id, session);
  return before ? before.state : null;
}

export function renderSessions() {
  const admin = isAdmin();
  $("sessions-title").textContent = admin ? t("nav.sessions") : t("sessions.title_mine");
  $("nav-sessions").textContent = admin ? t("nav.sessions") : t("nav.my_sessions");
  $("sessions-note").textContent = admin ? t("sessions.note_all") : t("sessions.note_mine");
  document.body.classList.toggle("is-admin", admin);
  const rows = [...state.sessions.values()].sort((a, b) => b.created - a.created);
  $("sessions-rows").replaceChildren(...rows.map(row));
  showEmpty("sessions-empty", rows.length === 0);
}

/** @param {Session} session */
function row(session) {
  const admin = isAdmin();
  const { label, tone, live } = stateWords(session.state);
  const mine = state.me && session.technician === state.me.username;
  const why = session.end_reason ? reasonWords(session.end_reason).label : "";
  return el("tr", { cls: live ? "" : "dim" }, [
    el("td", {}, [badge(label, tone)]),
    el("td", { cls: "host", text: session.hostname || session.agent_id }),
    el("td", { text: kindLabel(session) }),
    el("td", { cls: "message", text: session.ticket ? `${session.reason} [${session.ticket}]` : session.reason }),
    el("td", { cls: "phrase-cell", text: session.phrase || "—" }),
    el("td", { cls: "admin-col", text: session.technician }),
    timeCell(session.created),
    el("td", { cls: "nowrap", text: session.ended ? why : "—" }),
    el("td", { cls: "actions" }, [
      live && mine
        ? el("a", {
          cls: "button small", text: t("sessions.open"),
          attrs: { href: sessionPage(session) },
        })
        : null,
      live ? button(t("sessions.end"), () => end(session), "small ghost danger-text") : null,
      !live && admin && session.started && RECORDED.has(session.kind) ? replayLink(session) : null,
    ]),
  ]);
}

/**
 * Admins replay a session that ran: a screen in the noVNC player, a shell in asciinema's.
 * @param {Session} session
 */
function replayLink(session) {
  const page = session.kind === "screen" ? "/replay-screen.html" : "/replay.html";
  return el("a", {
    cls: "button small ghost", text: t("sessions.replay"),
    attrs: { href: `${page}?session=${encodeURIComponent(session.id)}` },
  });
}

/** @param {Session} session */
async function end(session) {
  const sure = await confirmAction(
    t("sessions.end_title", { host: session.hostname || session.agent_id }),
    t("sessions.end_text"),
    t("sessions.end_session"),
  );
  if (!sure) return;
  try {
    /** @type {Session} */
    const ended = await api("POST", `/api/v1/sessions/${encodeURIComponent(session.id)}/end`);
    state.sessions.set(ended.id, ended);
    renderSessions();
  } catch (error) {
    toast(errorMessage(error), "error");
  }
}
