// What the console knows right now; filled over REST, kept fresh by the live feed.
"use strict";

export const state = {
  me: null,
  agents: new Map(), // id → row as GET /api/v1/agents gives it
  sessions: new Map(), // id → session
  help: new Map(), // code → help request
  view: "",
};

export function isAdmin() {
  return Boolean(state.me && state.me.role === "admin");
}

export function sessionPage(session) {
  const page = session.kind === "screen" ? "/screen.html" : "/terminal.html";
  return `${page}?session=${encodeURIComponent(session.id)}`;
}

export function formatCode(code) {
  const digits = String(code || "").replace(/\D/g, "");
  return digits.length === 6 ? `${digits.slice(0, 3)} ${digits.slice(3)}` : digits;
}
