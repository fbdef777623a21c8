// What the shell and screen pages share: the session id from the URL, the
// API call with the CSRF header, and the words for each session state.
export const sessionId = new URLSearchParams(location.search).get("session") || "";
export const $ = (id) => document.getElementById(id);
export const wsBase = `wss://${location.host}/api/v1`;
export const OVER = ["ended", "denied", "expired"];
export const WORDS = {
  requested: "requested",
  awaiting_consent: "waiting for the user to allow",
  active: "active",
  ended: "ended",
  denied: "denied by the user",
  expired: "no answer: expired",
};

export async function api(method, path) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = sessionStorage.getItem("csrf") || "";
  const response = await fetch(path, { method, headers, credentials: "same-origin" });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.message || `HTTP ${response.status}`);
  return body;
}
