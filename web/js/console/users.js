// @ts-check
// Users (admins): add, disable, change role, reset TOTP; the TOTP-for-all policy.

import { t } from "../lib/i18n.js";
import { api, errorMessage } from "../lib/api.js";
import { $, badge, button, confirmAction, el, toast } from "../lib/dom.js";
import { state } from "./state.js";

/**
 * A user as GET /api/v1/users lists it.
 * @typedef {object} User
 * @property {string} username
 * @property {string} full_name
 * @property {"admin" | "technician"} role
 * @property {boolean} totp
 * @property {boolean} disabled
 */

/** @type {User[]} */
let users = [];

export function setupUsers() {
  $("user-form").addEventListener("submit", create);
  $("policy-totp").addEventListener("change", setPolicy);
}

export async function loadUsers() {
  const [list, policy] = await Promise.all([api("GET", "/api/v1/users"), api("GET", "/api/v1/policy")]);
  users = list;
  $("policy-totp", HTMLInputElement).checked = Boolean(policy.require_totp);
  renderUsers();
}

export function renderUsers() {
  $("users-rows").replaceChildren(...users.map(row));
}

/** @param {User} user */
function row(user) {
  const self = state.me && user.username === state.me.username;
  const other = user.role === "admin" ? "technician" : "admin";
  return el("tr", { cls: user.disabled ? "dim" : "" }, [
    el("td", { cls: "host", text: user.username }),
    el("td", { text: user.full_name }),
    el("td", {}, [badge(user.role === "admin" ? t("users.admin") : t("users.technician"), user.role === "admin" ? "accent" : "")]),
    el("td", {}, [badge(user.totp ? t("users.totp_on") : t("users.totp_off"), user.totp ? "ok" : "off")]),
    el("td", {}, [badge(user.disabled ? t("users.disabled") : t("users.active"), user.disabled ? "bad" : "ok")]),
    el("td", { cls: "actions" }, self ? [el("span", { cls: "muted small", text: t("users.you") })] : [
      button(user.disabled ? t("users.enable") : t("users.disable"), () => change(user, { disabled: !user.disabled },
        user.disabled ? null : t("users.disable_title", { user: user.username }),
        t("users.disable_text")), "small ghost"),
      button(other === "admin" ? t("users.make_admin") : t("users.make_technician"),
        () => change(user, { role: other }, null, ""), "small ghost"),
      user.totp ? button(t("users.reset_totp"), () => resetTotp(user), "small ghost danger-text") : null,
    ]),
  ]);
}

/**
 * @param {User} user
 * @param {Partial<User>} body
 * @param {string | null} question asked first, if any
 * @param {string} detail
 */
async function change(user, body, question, detail) {
  if (question && !(await confirmAction(question, detail, t("users.disable")))) return;
  try {
    /** @type {User} */
    const updated = await api("PATCH", `/api/v1/users/${encodeURIComponent(user.username)}`, body);
    users = users.map((u) => (u.username === updated.username ? updated : u));
    renderUsers();
  } catch (error) {
    toast(errorMessage(error), "error");
  }
}

/** @param {User} user */
async function resetTotp(user) {
  const sure = await confirmAction(
    t("users.reset_title", { user: user.username }),
    t("users.reset_text"),
    t("users.reset"),
  );
  if (!sure) return;
  try {
    await api("POST", `/api/v1/users/${encodeURIComponent(user.username)}/reset-totp`);
    toast(t("users.reset_done", { user: user.username }));
    await loadUsers();
  } catch (error) {
    toast(errorMessage(error), "error");
  }
}

/** @param {SubmitEvent} event */
async function create(event) {
  event.preventDefault();
  const form = $("user-form", HTMLFormElement);
  const error = $("user-error");
  error.textContent = "";
  const body = Object.fromEntries(new FormData(form));
  try {
    /** @type {User} */
    const made = await api("POST", "/api/v1/users", body);
    users = [...users, made].sort((a, b) => a.username.localeCompare(b.username));
    renderUsers();
    form.reset();
    toast(t("users.added", { user: made.username }));
  } catch (e) {
    error.textContent = errorMessage(e);
  }
}

async function setPolicy() {
  const box = $("policy-totp", HTMLInputElement);
  const wanted = box.checked;
  try {
    const policy = await api("PUT", "/api/v1/policy", { require_totp: wanted });
    box.checked = policy.require_totp;
    toast(wanted ? t("users.totp_required") : t("users.totp_optional"));
  } catch (error) {
    box.checked = !wanted;
    toast(errorMessage(error), "error");
  }
}
