// @ts-check
// The words for a help session, for every page: its states, kinds and end
// reasons as the broker's API names them, and what the pages call them.
//
//   requested ─▶ awaiting_consent ─▶ active ─▶ ended
//                      ├─▶ denied   (the user clicked Deny)
//                      └─▶ expired  (no answer in time)

import { plain } from "./dom.js";

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
  requested: { step: 0, label: "Requested", tone: "wait", status: "requested", news: "" },
  awaiting_consent: {
    step: 1, label: "Waiting for consent", tone: "wait", status: "waiting for the user to allow", news: "",
  },
  active: { step: 2, label: "Active", tone: "ok", status: "active", news: "the user allowed your request." },
  ended: { step: FINAL, label: "Ended", tone: "off", status: "ended", news: "" },
  denied: {
    step: FINAL, label: "Denied", tone: "bad", status: "denied by the user",
    news: "the user declined your request.",
  },
  expired: {
    step: FINAL, label: "No answer", tone: "off", status: "no answer: expired",
    news: "no answer, the request expired.",
  },
};

/**
 * The words for a state; a state this page does not know is shown as it came.
 * @param {string} state
 * @returns {StateWords}
 */
export function stateWords(state) {
  const known = Object.hasOwn(STATES, state) ? STATES[/** @type {SessionState} */ (state)] : null;
  const words = known || { step: -1, label: plain(state, 40), tone: "off", status: plain(state, 40), news: "" };
  return { ...words, live: words.step >= 0 && words.step < FINAL, over: words.step === FINAL };
}

/** @typedef {{label: string, cause: string}} ReasonWords the console's "Ended" column; the session page's "ended (…)" */

/** @type {Record<EndReason, ReasonWords>} */
const END_REASONS = {
  technician: { label: "by technician", cause: "technician" },
  user: { label: "by the user", cause: "user" },
  shell_exited: { label: "shell exited", cause: "shell exited" },
  agent_lost: { label: "PC went offline", cause: "agent lost" },
  broker_restart: { label: "broker restarted", cause: "broker restart" },
  error: { label: "error", cause: "error" },
  expired: { label: "no answer", cause: "expired" },
  nobody_signed_in: { label: "nobody signed in", cause: "nobody signed in" },
  unsupported: { label: "not offered by this PC", cause: "not offered by this PC" },
  signed_out: { label: "user signed out", cause: "user signed out" },
};

/**
 * @param {string} reason
 * @returns {ReasonWords}
 */
export function reasonWords(reason) {
  if (Object.hasOwn(END_REASONS, reason)) return END_REASONS[/** @type {EndReason} */ (reason)];
  const text = plain(reason, 40).replaceAll("_", " ");
  return { label: text, cause: text };
}

/**
 * How a session that is over ended, in a sentence.
 * @param {Session} session
 */
export function outcome(session) {
  if (session.state === "denied") return "The user denied the request.";
  if (session.state === "expired") return "The user did not answer in time; the request expired.";
  const cause = session.end_reason ? ` (${reasonWords(session.end_reason).cause})` : "";
  return `The session has ended${cause}.`;
}

/** @type {Record<SessionKind, {label: string, page: string}>} */
const KINDS = {
  shell: { label: "Shell", page: "/terminal.html" },
  "admin-shell": { label: "Admin shell (root)", page: "/terminal.html" },
  screen: { label: "Screen", page: "/screen.html" },
  files: { label: "Files", page: "/files.html" },
};

/** @param {Session} session "Shell", "Screen" or "Screen (view only)" */
export function kindLabel(session) {
  const { label } = KINDS[session.kind] || KINDS.shell;
  return session.kind === "screen" && session.view_only ? `${label} (view only)` : label;
}

/** @param {Session} session the page that shows it */
export function sessionPage(session) {
  const { page } = KINDS[session.kind] || KINDS.shell;
  return `${page}?session=${encodeURIComponent(session.id)}`;
}
