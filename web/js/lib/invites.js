// @ts-check
// Invitations on the shell and screen pages (#18). The session's own technician
// gets an "Invite…" panel: a login, observe or control, and the list of the
// people invited with a Revoke button each. An invitee's page waits until the
// person at the PC allowed them (their own verification phrase is shown), then
// opens the terminal or the screen as the owner's page does.

import { api, errorMessage } from "./api.js";
import { $, button, el, plain } from "./dom.js";
import { t } from "./i18n.js";

/**
 * @typedef {object} Invitation
 * @property {string} id
 * @property {string} session_id
 * @property {string} username
 * @property {string} full_name
 * @property {"observe" | "control"} mode
 * @property {string} phrase
 * @property {string} state asked | allowed | joined | left | denied | expired | revoked | removed | ended
 */

/**
 * The session as this page's user sees it; an invitee's view also says whether the
 * session's own technician has it open (they may join only then).
 * @typedef {import("./session-states.js").Session & {invitation?: Invitation, owner_here?: boolean}} SessionSeen
 */

const LIVE = ["asked", "allowed", "joined", "left"]; // "left": they may come back

/**
 * Whether this page may open the session's terminal or screen now. For an
 * invitee: only once the PC user allowed them; until then, what to say.
 * @param {SessionSeen} session
 */
export function mayJoin(session) {
  const invitation = session.invitation;
  if (!invitation) return true;
  $("end", HTMLButtonElement).hidden = true; // an invitee leaves by closing the page
  // "joined" or "left": a reloaded page, a dropped network: the invitation still stands
  const allowed = ["allowed", "joined", "left"].includes(invitation.state);
  if (allowed && session.owner_here !== false) return true;
  $("notice").hidden = false;
  $("phrase").textContent = plain(invitation.phrase, 100);
  $("phrase-line").hidden = invitation.state !== "asked";
  $("message").textContent = allowed // the owner's view records what everyone sees: wait for it
    ? t("invite.owner_away", { technician: plain(session.technician, 100) })
    : invitation.state === "asked"
      ? t("invite.waiting", { host: plain(session.hostname, 100) })
      : t("invite.over", { state: invitation.state });
  return false;
}

/**
 * After the page showed the session: an invitee gets no chat and notes (the owner's).
 * @param {SessionSeen} session
 */
export function inviteeTidy(session) {
  const side = document.getElementById("side");
  if (side && session.invitation) side.hidden = true;
}

/**
 * The owner's "Invite…" panel, made once, under the session bar.
 * @param {SessionSeen} session
 * @param {string} path the session's API path
 */
export function showInvitePanel(session, path) {
  if (session.invitation || session.state !== "active" || document.getElementById("invites")) return;
  const list = el("ul", { cls: "invite-list", attrs: { id: "invite-list" } });
  const error = el("p", { cls: "error", attrs: { role: "alert" } });
  const username = el("input", { attrs: { maxlength: 64, autocomplete: "off", placeholder: t("invite.username") } });
  const mode = el("select", {}, [
    el("option", { text: t("invite.observe"), attrs: { value: "observe" } }),
    el("option", { text: t("invite.control"), attrs: { value: "control" } }),
  ]);
  const form = el("form", { cls: "chat-form" }, [username, mode, el("button", { text: t("invite.send"), attrs: { type: "submit" } })]);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    try {
      await api("POST", `${path}/invite`, { username: username.value.trim(), mode: mode.value });
      username.value = "";
      await loadInvites(path);
    } catch (failure) {
      error.textContent = errorMessage(failure);
    }
  });
  const panel = el("details", { cls: "session-extras", attrs: { id: "invites" } }, [
    el("summary", { text: t("invite.title") }),
    el("p", { text: t("invite.intro") }),
    form,
    error,
    list,
  ]);
  $("notice").after(panel);
  loadInvites(path);
}

/** @param {string} path */
export async function loadInvites(path) {
  const list = document.getElementById("invite-list");
  if (!list) return;
  /** @type {Invitation[]} */
  const invitations = (await api("GET", `${path}/invites`).catch(() => [])) || [];
  list.replaceChildren(
    ...invitations.map((invitation) => {
      const words = t("invite.line", {
        name: plain(invitation.full_name, 100),
        user: plain(invitation.username, 64),
        mode: t(invitation.mode === "control" ? "invite.control" : "invite.observe"),
        state: invitation.state,
        phrase: plain(invitation.phrase, 100),
      });
      const revoke = LIVE.includes(invitation.state)
        ? button(t("invite.revoke"), async () => {
            await api("DELETE", `${path}/invite/${encodeURIComponent(invitation.username)}`).catch(() => null);
            await loadInvites(path);
          })
        : null;
      return el("li", {}, [el("span", { text: words }), revoke]);
    }),
  );
}
