// @ts-check
// Your account: set up two-factor login (TOTP) with a QR code, see recovery codes once.

import { api, errorMessage } from "../lib/api.js";
import { $, el, field } from "../lib/dom.js";
import { t, tn } from "../lib/i18n.js";
import { state } from "./state.js";

let afterEnrol = () => {};

/** @param {() => void} onEnrolled */
export function setupAccount(onEnrolled) {
  afterEnrol = onEnrolled;
  $("totp-start").addEventListener("click", start);
  $("totp-form").addEventListener("submit", confirm);
  $("totp-done").addEventListener("click", () => {
    $("totp-codes").hidden = true;
    $("totp-code-list").replaceChildren();
    afterEnrol();
  });
}

export async function loadAccount() {
  const status = await api("GET", "/api/v1/totp");
  const me = state.me;
  if (!me) return;
  const names = me.full_name === me.username ? [me.username] : [me.full_name, me.username];
  $("account-who").textContent = [...names, me.role === "admin" ? t("role.admin") : t("role.technician")].join(" · ");
  $("account-required").hidden = !me.must_enrol_totp;
  const showingCodes = !$("totp-codes").hidden;
  $("totp-on").hidden = !status.enrolled || showingCodes;
  $("totp-off").hidden = status.enrolled || !$("totp-setup").hidden;
  $("totp-left").textContent = tn("account.codes_left", Number(status.recovery_codes_left) || 0);
}

function codeField() {
  return field($("totp-form", HTMLFormElement), "code");
}

async function start() {
  const setup = await api("POST", "/api/v1/totp/setup");
  $("totp-off").hidden = true;
  $("totp-setup").hidden = false;
  const qr = $("totp-qr", HTMLImageElement);
  qr.hidden = !setup.qr;
  if (setup.qr && setup.qr.startsWith("data:image/svg+xml;base64,")) qr.src = setup.qr;
  $("totp-secret").textContent = setup.secret.replace(/(.{4})/g, "$1 ").trim();
  $("totp-error").textContent = "";
  codeField().focus();
}

/** @param {SubmitEvent} event */
async function confirm(event) {
  event.preventDefault();
  const code = codeField();
  try {
    const done = await api("POST", "/api/v1/totp/confirm", { code: code.value.trim() });
    $("totp-form", HTMLFormElement).reset();
    $("totp-setup").hidden = true;
    $("totp-codes").hidden = false;
    /** @type {string[]} */
    const codes = done.recovery_codes;
    $("totp-code-list").replaceChildren(...codes.map((text) => el("li", { cls: "mono", text })));
    $("totp-done").focus();
    if (state.me) state.me = { ...state.me, totp_enrolled: true, must_enrol_totp: false };
    $("account-required").hidden = true;
  } catch (error) {
    $("totp-error").textContent = errorMessage(error);
  }
}
