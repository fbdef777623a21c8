// @ts-check
// The words for a help session, for every page: its states, kinds and end
// reasons as the broker's API names them, and what the pages call them.
//
//   requested ─▶ awaiting_consent ─▶ active ─▶ ended
//                      ├─▶ denied   (the user clicked Deny)
//                      └─▶ expired  (no answer in time)

import { plain } from "./dom.js";
import { t } from "./i18n.js";

/** @typedef {"requested" | "awaiting_consent" | "active" | "ended" | "denied" | "expired"} SessionState */
/** @typedef {"shell" | "admin-shell" | "screen" | "files"} SessionKind */
/** @typedef {"technician" | "user" | "shell_exited" | "agent_lost" | "broker_restart" | "error" | "expired" | "nobody_signed_in" | "unsupported" | "signed_out"} EndReason */

/**
 * A session as GET /api/v1/sessions/ID and the events socket give it.
 * @typedef {object} Session
 * @property {string} id
 * @property {string} agent_id
 * @property {string} hostname
 * @property {string} technician
 * @property {SessionKind} kind
 * @property {string} reason
 * @property {string} phrase
 * @property {SessionState} state
 * @property {boolean} view_only
 * @property {number} created
 * @property {number | null} [started] when it became active (null: it never did)
 * @property {number | null} ended
 * @property {EndReason | null} end_reason
 * @property {string} [ticket] the help desk's ticket, e.g. HD-1234
 * @property {string} [notes] the technician's notes
 */

/**
 * @typedef {object} StateWords
 * @property {string} label the console's badge
 * @property {string} tone the badge's colour (a CSS class)
 * @property {string} status the session page's status line
 * @property {string} news the toast the technician who asked gets, if any
 * @property {number} step how far along (-1: unknown), so that stale news never moves a page back
 * @property {boolean} live not over yet: it can still be opened or ended
 * @property {boolean} over final
 */

const FINAL = 3;
/** @type {Record<SessionState, Omit<StateWords, "live" | "over">>} */
const STATES = {
  requested: { step: 0, label: "state.requested", tone: "wait", status: "status.requested", news: "" },
  awaiting_consent: {
    step: 1, label: "state.awaiting_consent", tone: "wait", status: "status.awaiting_consent", news: "",
  },
  active: { step: 2, label: "state.active", tone: "ok", status: "status.active", news: "news.active" },
  ended: { step: FINAL, label: "state.ended", tone: "off", status: "status.ended", news: "" },
  denied: {
    step: FINAL, label: "state.denied", tone: "bad", status: "status.denied", news: "news.denied",
  },
  expired: {
    step: FINAL, label: "state.expired", tone: "off", status: "status.expired", news: "news.expired",
  },
};

/**
 * The words for a state; a state this page does not know is shown as it came.
 * @param {string} state
 * @returns {StateWords}
 */
export function stateWords(state) {
  const known = Object.hasOwn(STATES, state) ? STATES[/** @type {SessionState} */ (state)] : null;
  const words = known
    ? { ...known, label: t(known.label), status: t(known.status), news: known.news && t(known.news) }
    : { step: -1, label: plain(state, 40), tone: "off", status: plain(state, 40), news: "" };
  return { ...words, live: words.step >= 0 && words.step < FINAL, over: words.step === FINAL };
}

/** @typedef {{label: string, cause: string}} ReasonWords the console's "Ended" column; the session page's "ended (…)" */

/** @type {Record<EndReason, ReasonWords>} */
const END_REASONS = {
  technician: { label: "end.technician", cause: "cause.technician" },
  user: { label: "end.user", cause: "cause.user" },
  shell_exited: { label: "end.shell_exited", cause: "end.shell_exited" },
  agent_lost: { label: "end.agent_lost", cause: "cause.agent_lost" },
  broker_restart: { label: "end.broker_restart", cause: "cause.broker_restart" },
  error: { label: "end.error", cause: "end.error" },
  expired: { label: "end.expired", cause: "cause.expired" },
  nobody_signed_in: { label: "end.nobody_signed_in", cause: "end.nobody_signed_in" },
  unsupported: { label: "end.unsupported", cause: "end.unsupported" },
  signed_out: { label: "end.signed_out", cause: "end.signed_out" },
};

/**
 * @param {string} reason
 * @returns {ReasonWords}
 */
export function reasonWords(reason) {
  if (Object.hasOwn(END_REASONS, reason)) {
    const { label, cause } = END_REASONS[/** @type {EndReason} */ (reason)];
    return { label: t(label), cause: t(cause) };
  }
  const text = plain(reason, 40).replaceAll("_", " ");
  return { label: text, cause: text };
}

/**
 * How a session that is over ended, in a sentence.
 * @param {Session} session
 */
export function outcome(session) {
  if (session.state === "denied") return t("outcome.denied");
  if (session.state === "expired") return t("outcome.expired");
  if (!session.end_reason) return t("outcome.ended");
  return t("outcome.ended_because", { cause: reasonWords(session.end_reason).cause });
}

/** @type {Record<SessionKind, {label: string, page: string}>} */
const KINDS = {
  shell: { label: "kind.shell", page: "/terminal.html" },
  "admin-shell": { label: "kind.admin_shell", page: "/terminal.html" },
  screen: { label: "kind.screen", page: "/screen.html" },
  files: { label: "kind.files", page: "/files.html" },
};

/** @param {Session} session "Shell", "Screen" or "Screen (view only)" */
export function kindLabel(session) {
  const { label } = KINDS[session.kind] || KINDS.shell;
  if (session.kind === "files" && session.view_only) return t("kind.files_view_only");
  return session.kind === "screen" && session.view_only ? t("kind.screen_view_only") : t(label);
}

/** @param {Session} session the page that shows it */
export function sessionPage(session) {
  const { page } = KINDS[session.kind] || KINDS.shell;
  return `${page}?session=${encodeURIComponent(session.id)}`;
}
