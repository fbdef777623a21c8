// @ts-check
// The broker's HTTP API, for every page: same-origin fetch, never cached, never
// redirected, the CSRF header on every state change, and one error type with
// the broker's error code and message (its JSON errors are {error, message}).

import { known, t } from "./i18n.js";

const CSRF_KEY = "csrf";
// The console sets it at login and from GET /api/v1/me; the session pages of
// the same tab find it in sessionStorage, and a page opened in a new tab asks
// GET /api/v1/me for it before its first state change.
let csrf = sessionStorage.getItem(CSRF_KEY) || "";

/** @param {unknown} token */
export function setCsrf(token) {
  csrf = typeof token === "string" ? token : "";
  if (csrf) sessionStorage.setItem(CSRF_KEY, csrf);
  else sessionStorage.removeItem(CSRF_KEY);
}

export class ApiError extends Error {
  /**
   * @param {number} status the HTTP status; 0 when the broker could not be reached
   * @param {string} code the broker's error code ("network" or "http" without one)
   * @param {string} message
   * @param {string | null} [retryAfter] the Retry-After header, if any
   */
  constructor(status, code, message, retryAfter = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

/** @returns {Promise<string>} this web session's CSRF token, or "" when not logged in */
async function fetchCsrf() {
  try {
    const me = await (await send("GET", "/api/v1/me", undefined)).json();
    setCsrf(me && me.csrf_token);
  } catch {
    // Not logged in or unreachable: the state change then fails with the broker's own answer.
  }
  return csrf;
}

/**
 * @param {string} method
 * @param {string} path
 * @param {unknown} body sent as JSON unless undefined
 * @returns {Promise<Response>} an OK response; anything else throws ApiError
 */
async function send(method, path, body) {
  /** @type {Record<string, string>} */
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && method !== "HEAD") headers["X-CSRF-Token"] = csrf || (await fetchCsrf());
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      credentials: "same-origin",
      cache: "no-store",
      redirect: "error",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, "network", t("error.network"));
  }
  if (!response.ok) {
    const data = await response.json().catch(() => null);
    const code = (data && typeof data.error === "string" && data.error) || "http";
    const message = (data && typeof data.message === "string" && data.message)
      || t("error.http", { status: response.status });
    throw new ApiError(response.status, code, message, response.headers.get("retry-after"));
  }
  return response;
}

/**
 * A JSON API call. The answer is the broker's JSON as is (null when it sent
 * none): the caller knows its shape.
 * @param {string} method
 * @param {string} path
 * @param {unknown} [body]
 * @returns {Promise<any>}
 */
export async function api(method, path, body) {
  const response = await send(method, path, body);
  return response.json().catch(() => null);
}

/**
 * A GET whose answer is text, such as a recording.
 * @param {string} path
 */
export async function apiText(path) {
  return (await send("GET", path, undefined)).text();
}

/** The CSRF token for a state change this module does not send itself (an upload). */
export async function csrfToken() {
  return csrf || (await fetchCsrf());
}

/**
 * A GET whose answer is read as a stream (a file download), or ApiError.
 * @param {string} path
 */
export async function apiStream(path) {
  return send("GET", path, undefined);
}

/**
 * What to tell the user about a failure, whatever was thrown.
 * @param {unknown} error
 */
export function errorMessage(error) {
  if (error instanceof ApiError) return known(`error.${error.code}`) || error.message;
  return error instanceof Error ? error.message : String(error);
}
