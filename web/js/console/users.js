// @ts-check
// Users (admins): add, disable, change role, reset TOTP; the TOTP-for-all policy.

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
    el("td", {}, [badge(user.role === "admin" ? "Admin" : "Technician", user.role === "admin" ? "accent" : "")]),
    el("td", {}, [badge(user.totp ? "On" : "Not set up", user.totp ? "ok" : "off")]),
    el("td", {}, [badge(user.disabled ? "Disabled" : "Active", user.disabled ? "bad" : "ok")]),
    el("td", { cls: "actions" }, self ? [el("span", { cls: "muted small", text: "you" })] : [
      button(user.disabled ? "Enable" : "Disable", () => change(user, { disabled: !user.disabled },
        user.disabled ? null : `Disable ${user.username}?`,
        "They are logged out at once and cannot log in until enabled again."), "small ghost"),
      button(`Make ${other}`, () => change(user, { role: other }, null, ""), "small ghost"),
      user.totp ? button("Reset TOTP", () => resetTotp(user), "small ghost danger-text") : null,
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
  if (question && !(await confirmAction(question, detail, "Disable"))) return;
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
    `Reset two-factor login for ${user.username}?`,
    "Their authenticator app and recovery codes stop working. They set it up again at their next login.",
    "Reset",
  );
  if (!sure) return;
  try {
    await api("POST", `/api/v1/users/${encodeURIComponent(user.username)}/reset-totp`);
    toast(`Two-factor login of ${user.username} was reset.`);
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
    toast(`${made.username} was added.`);
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
    toast(wanted ? "Two-factor login is now required for everyone." : "Two-factor login is now optional.");
  } catch (error) {
    box.checked = !wanted;
    toast(errorMessage(error), "error");
  }
}
