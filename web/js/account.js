// Your account: set up two-factor login (TOTP) with a QR code, see recovery codes once.
"use strict";

import { api } from "./api.js";
import { $, el } from "./dom.js";
import { state } from "./state.js";

let afterEnrol = () => {};

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
  const names = me.full_name === me.username ? [me.username] : [me.full_name, me.username];
  $("account-who").textContent = [...names, me.role].join(" · ");
  $("account-required").hidden = !me.must_enrol_totp;
  const showingCodes = !$("totp-codes").hidden;
  $("totp-on").hidden = !status.enrolled || showingCodes;
  $("totp-off").hidden = status.enrolled || !$("totp-setup").hidden;
  $("totp-left").textContent = `${status.recovery_codes_left} recovery code${status.recovery_codes_left === 1 ? "" : "s"} left.`;
}

async function start() {
  const setup = await api("POST", "/api/v1/totp/setup");
  $("totp-off").hidden = true;
  $("totp-setup").hidden = false;
  const qr = $("totp-qr");
  qr.hidden = !setup.qr;
  if (setup.qr && setup.qr.startsWith("data:image/svg+xml;base64,")) qr.src = setup.qr;
  $("totp-secret").textContent = setup.secret.replace(/(.{4})/g, "$1 ").trim();
  $("totp-error").textContent = "";
  $("totp-form").elements.code.focus();
}

async function confirm(event) {
  event.preventDefault();
  const form = event.target;
  try {
    const done = await api("POST", "/api/v1/totp/confirm", { code: form.elements.code.value.trim() });
    form.reset();
    $("totp-setup").hidden = true;
    $("totp-codes").hidden = false;
    $("totp-code-list").replaceChildren(...done.recovery_codes.map((code) => el("li", { cls: "mono", text: code })));
    $("totp-done").focus();
    state.me = { ...state.me, totp_enrolled: true, must_enrol_totp: false };
    $("account-required").hidden = true;
  } catch (error) {
    $("totp-error").textContent = error.message;
  }
}
