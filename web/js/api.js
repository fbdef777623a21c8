// The broker's JSON API: same-origin fetch, the CSRF header on every state
// change, one error type with the broker's error code and message.
"use strict";

let csrf = "";

export function setCsrf(token) {
  csrf = typeof token === "string" ? token : "";
  // The session pages (terminal, screen) of this tab read it from here; they
  // can also ask GET /api/v1/me, which answers it to same-origin pages only.
  if (csrf) sessionStorage.setItem("csrf", csrf);
  else sessionStorage.removeItem("csrf");
}

export class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && method !== "HEAD") headers["X-CSRF-Token"] = csrf;
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
    throw new ApiError(0, "network", "The broker cannot be reached. Check the connection and try again.");
  }
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const code = (data && data.error) || "http";
    const message = (data && data.message) || `The broker answered ${response.status}.`;
    throw new ApiError(response.status, code, message, response.headers.get("retry-after"));
  }
  return data;
}
