// @ts-check
// What the shell and screen pages share: the session from the URL, its state in
// the bar and the notice, the End button, and its changes live from the events
// socket. Nothing polls: the page loads the session when it opens, when the
// feed (re)connects and when its own socket closed; the rest is news.

import { api, errorMessage } from "./api.js";
import { $, plain } from "./dom.js";
import { EventFeed } from "./events.js";
import { t, translatePage } from "./i18n.js";
import { inviteeTidy, loadInvites, mayJoin, showInvitePanel } from "./invites.js";
import { outcome, stateWords } from "./session-states.js";

/** @typedef {import("./session-states.js").Session} Session */

const sessionId = new URLSearchParams(location.search).get("session") || "";
/** The API path of the session this page (?session=ID) shows. */
export const sessionPath = `/api/v1/sessions/${encodeURIComponent(sessionId)}`;

/**
 * The session's own WebSocket.
 * @param {"terminal" | "screen"} channel
 * @param {string} [query] "?…" or nothing
 */
export function socketUrl(channel, query = "") {
  return `wss://${location.host}${sessionPath}/${channel}${query}`;
}

/**
 * @typedef {object} SessionView what a page does beyond the shared part
 * @property {import("./session-states.js").SessionKind} kind what it shows
 * @property {(session: Session) => void} active the session is active (again): show it
 * @property {(session: Session) => void} [over] it is over: tidy up
 * @property {() => string} [failure] why the page's own socket failed, as a sentence, if it did
 * @property {() => void} [ended] after the End button's request, whatever the answer
 * @property {(event: import("./events.js").FeedEvent) => void} [event] other news of this session (chat)
 */

/**
 * Runs the page: load, listen, show.
 * @param {SessionView} view
 */
export function runSessionPage(view) {
  translatePage();
  /** @type {Session | null} */
  let current = null;
  const feed = new EventFeed({
    onEvent(event) {
      if (event.type === "session" && event.session && event.session.id === sessionId) show(event.session);
      else if (event.type === "invitation" && event.invitation?.session_id === sessionId) loadInvites(sessionPath);
      else if (event.session_id === sessionId) view.event?.(event);
    },
    onState(state) {
      if (state === "live" || state === "resumed") refresh();
      if (state === "signed_out") {
        $("notice").hidden = false;
        $("message").textContent = t("page.signed_out");
      }
    },
  });

  /** @param {Session} session */
  function show(session) {
    const words = stateWords(session.state);
    if (current && words.step >= 0 && stateWords(current.state).step > words.step) return; // stale
    current = session;
    $("host").textContent = `${plain(session.hostname, 100)} — ${view.kind}`;
    const status = $("state");
    status.textContent = words.status;
    status.className = `state ${session.state === "active" ? "active" : words.over ? "over" : ""}`;
    $("phrase").textContent = plain(session.phrase, 100);
    $("phrase-line").hidden = session.state !== "awaiting_consent";
    $("end", HTMLButtonElement).disabled = !["awaiting_consent", "active"].includes(session.state);
    if (session.state === "awaiting_consent") {
      $("message").textContent =
        `Waiting for the person at ${plain(session.hostname, 100)} to click “Allow help”.`;
    } else if (session.state === "active") {
      if (!mayJoin(session)) return; // an invitee the PC user has not allowed (yet)
      showInvitePanel(session, sessionPath);
      view.active(session);
      inviteeTidy(session);
    } else if (words.over) {
      feed.stop();
      $("notice").hidden = false;
      const failed = session.state === "ended" && view.failure ? view.failure() : "";
      $("message").textContent = failed || outcome(session);
      view.over?.(session);
    }
  }

  async function refresh() {
    try {
      show(await api("GET", sessionPath));
    } catch (error) {
      $("message").textContent = `Cannot load the session: ${errorMessage(error)}`;
    }
  }

  $("end").addEventListener("click", async () => {
    $("end", HTMLButtonElement).disabled = true;
    try {
      show(await api("POST", `${sessionPath}/end`));
    } catch (error) {
      $("message").textContent = errorMessage(error);
      refresh();
    }
    view.ended?.();
  });

  feed.start();
  refresh();
  return {
    /** The session as last shown, if any. */
    current: () => current,
    /** Load the session again, e.g. after the page's own socket closed. */
    refresh,
  };
}
