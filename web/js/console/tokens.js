// @ts-check
// Enrolment tokens (admins): create one and copy its command, list, revoke.

import { t } from "../lib/i18n.js";
import { api, errorMessage } from "../lib/api.js";
import { $, badge, button, confirmAction, el, field, showEmpty, timeCell, toast } from "../lib/dom.js";

/**
 * A token as GET /api/v1/tokens lists it (never its secret).
 * @typedef {object} Token
 * @property {string} id
 * @property {"active" | "used" | "expired" | "revoked"} state
 * @property {number} uses_left
 * @property {number} expires
 * @property {string} created_by
 * @property {number} created
 */

const TONES = { active: "ok", used: "off", expired: "off", revoked: "bad" };
/** @type {Token[]} */
let tokens = [];

export function setupTokens() {
  $("token-form").addEventListener("submit", create);
  $("token-copy").addEventListener("click", copy);
}

export async function loadTokens() {
  tokens = await api("GET", "/api/v1/tokens");
  renderTokens();
}

export function renderTokens() {
  $("tokens-rows").replaceChildren(...tokens.map(row));
  showEmpty("tokens-empty", tokens.length === 0);
}

/** @param {Token} token */
function row(token) {
  return el("tr", { cls: token.state === "active" ? "" : "dim" }, [
    el("td", { cls: "mono", text: token.id }),
    el("td", {}, [badge(Object.hasOwn(TONES, token.state) ? t(`tokens.state_${token.state}`) : token.state, TONES[token.state])]),
    el("td", { text: token.uses_left }),
    timeCell(token.expires),
    el("td", { cls: "mono small", text: token.created_by }),
    timeCell(token.created),
    el("td", { cls: "actions" }, [
      token.state === "active" ? button(t("tokens.revoke"), () => revoke(token), "small ghost danger-text") : null,
    ]),
  ]);
}

/** @param {SubmitEvent} event */
async function create(event) {
  event.preventDefault();
  const form = $("token-form", HTMLFormElement);
  $("token-error").textContent = "";
  try {
    const made = await api("POST", "/api/v1/tokens", {
      ttl: field(form, "ttl").value,
      uses: Number(field(form, "uses").value),
    });
    $("token-created").hidden = false;
    $("token-created-id").textContent = made.id;
    $("token-command").textContent = made.command;
    $("token-copied").textContent = "";
    $("token-copy").focus();
    await loadTokens();
  } catch (error) {
    $("token-error").textContent = errorMessage(error);
  }
}

async function copy() {
  try {
    await navigator.clipboard.writeText($("token-command").textContent || "");
    $("token-copied").textContent = t("tokens.copied");
  } catch {
    const range = document.createRange();
    range.selectNodeContents($("token-command"));
    const selection = window.getSelection();
    selection?.removeAllRanges();
    selection?.addRange(range);
    $("token-copied").textContent = t("tokens.selected");
  }
}

/** @param {Token} token */
async function revoke(token) {
  const sure = await confirmAction(t("tokens.revoke_title", { token: token.id }),
    t("tokens.revoke_text"), t("tokens.revoke"));
  if (!sure) return;
  try {
    await api("POST", `/api/v1/tokens/${encodeURIComponent(token.id)}/revoke`);
    await loadTokens();
  } catch (error) {
    toast(errorMessage(error), "error");
  }
}
