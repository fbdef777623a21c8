// @ts-check
// Sign-in: user name and password, then the TOTP code when the account has one.

import { ApiError, api, errorMessage, setCsrf } from "../lib/api.js";
import { $, field } from "../lib/dom.js";
import { t } from "../lib/i18n.js";

/** @type {() => Promise<void>} */
let onLoggedIn = async () => {};

/** @param {() => Promise<void>} loggedIn */
export function setupLogin(loggedIn) {
  onLoggedIn = loggedIn;
  $("login-form").addEventListener("submit", submit);
  $("login-back").addEventListener("click", () => passwordStep());
}

/** @param {string} [message] */
export function showLogin(message = "") {
  passwordStep();
  $("login-error").textContent = message;
}

/** @param {string} name */
function input(name) {
  return field($("login-form", HTMLFormElement), name);
}

function passwordStep() {
  $("login-password-step").hidden = false;
  $("login-totp-step").hidden = true;
  $("login-back").hidden = true;
  $("login-submit").textContent = "Sign in";
  input("totp").value = "";
  $("login-error").textContent = "";
  (input("username").value ? input("password") : input("username")).focus();
}

function totpStep() {
  $("login-password-step").hidden = true;
  $("login-totp-step").hidden = false;
  $("login-back").hidden = false;
  $("login-submit").textContent = "Verify";
  input("totp").focus();
}

/** @param {string | null} seconds */
function minutes(seconds) {
  const value = Math.max(1, Math.ceil(Number(seconds || 60) / 60));
  return t(value === 1 ? "login.minute" : "login.minutes", { count: value });
}

/** @param {SubmitEvent} event */
async function submit(event) {
  event.preventDefault();
  const error = $("login-error");
  /** @type {{username: string, password: string, totp?: string}} */
  const body = { username: input("username").value.trim(), password: input("password").value };
  if (!body.username || !body.password) {
    error.textContent = t("login.enter_both");
    return;
  }
  if (!$("login-totp-step").hidden) body.totp = input("totp").value.trim();
  const submitButton = $("login-submit", HTMLButtonElement);
  submitButton.disabled = true;
  try {
    const answer = await api("POST", "/api/v1/login", body);
    setCsrf(answer.csrf_token);
    $("login-form", HTMLFormElement).reset();
    passwordStep();
    await onLoggedIn();
  } catch (e) {
    const code = e instanceof ApiError ? e.code : "";
    if (code === "totp_required") {
      totpStep();
      error.textContent = "";
    } else if (code === "invalid_totp") {
      input("totp").value = "";
      input("totp").focus();
      error.textContent = t("login.wrong_code");
    } else if (e instanceof ApiError && code === "throttled") {
      error.textContent = t("login.throttled", { wait: minutes(e.retryAfter) });
    } else {
      if (code === "invalid_credentials") {
        passwordStep();
        input("password").value = "";
        input("password").focus();
      }
      error.textContent = errorMessage(e);
    }
  } finally {
    submitButton.disabled = false;
  }
}
