// Sign-in: user name and password, then the TOTP code when the account has one.
"use strict";

import { api, setCsrf } from "./api.js";
import { $ } from "./dom.js";

let onLoggedIn = () => {};

export function setupLogin(loggedIn) {
  onLoggedIn = loggedIn;
  $("login-form").addEventListener("submit", submit);
  $("login-back").addEventListener("click", () => passwordStep());
}

export function showLogin(message = "") {
  passwordStep();
  $("login-error").textContent = message;
}

function passwordStep() {
  const form = $("login-form");
  $("login-password-step").hidden = false;
  $("login-totp-step").hidden = true;
  $("login-back").hidden = true;
  $("login-submit").textContent = "Sign in";
  form.elements.totp.value = "";
  $("login-error").textContent = "";
  (form.elements.username.value ? form.elements.password : form.elements.username).focus();
}

function totpStep() {
  $("login-password-step").hidden = true;
  $("login-totp-step").hidden = false;
  $("login-back").hidden = false;
  $("login-submit").textContent = "Verify";
  $("login-form").elements.totp.focus();
}

function minutes(seconds) {
  const value = Math.max(1, Math.ceil(Number(seconds || 60) / 60));
  return `${value} minute${value === 1 ? "" : "s"}`;
}

async function submit(event) {
  event.preventDefault();
  const form = event.target;
  const error = $("login-error");
  const body = { username: form.elements.username.value.trim(), password: form.elements.password.value };
  if (!body.username || !body.password) {
    error.textContent = "Enter your user name and password.";
    return;
  }
  const wantsCode = !$("login-totp-step").hidden;
  if (wantsCode) body.totp = form.elements.totp.value.trim();
  $("login-submit").disabled = true;
  try {
    const answer = await api("POST", "/api/v1/login", body);
    setCsrf(answer.csrf_token);
    form.reset();
    passwordStep();
    await onLoggedIn();
  } catch (e) {
    if (e.code === "totp_required") {
      totpStep();
      error.textContent = "";
    } else if (e.code === "invalid_totp") {
      form.elements.totp.value = "";
      form.elements.totp.focus();
      error.textContent = "That code is wrong or was used already. Wait for the next one and try again.";
    } else if (e.code === "throttled") {
      error.textContent = `Too many failed attempts. Try again in ${minutes(e.retryAfter)}.`;
    } else {
      if (e.code === "invalid_credentials") {
        passwordStep();
        form.elements.password.value = "";
        form.elements.password.focus();
      }
      error.textContent = e.message;
    }
  } finally {
    $("login-submit").disabled = false;
  }
}
