// The dialog in which a technician asks for a shell or the screen, with a reason.
"use strict";

import { api } from "./api.js";
import { $ } from "./dom.js";
import { state, sessionPage } from "./state.js";

let target = null;
let onSent = () => {};

export function setupRequest(afterSent) {
  onSent = afterSent;
  const dialog = $("request-dialog");
  $("request-form").addEventListener("submit", send);
  $("request-cancel").addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", () => {
    target = null;
  });
}

export function openRequest(agent, kind = "shell", helpCode = "", reason = "") {
  target = agent;
  const form = $("request-form");
  form.reset();
  form.hidden = false;
  $("request-sent").hidden = true;
  $("request-error").textContent = "";
  $("request-title").textContent = `Ask for help access to ${agent.hostname}`;
  $("request-about").textContent = [agent.user && `user ${agent.user}`, agent.os].filter(Boolean).join(" · ");
  form.elements.kind.value = kind;
  form.elements.help_code.value = helpCode;
  form.elements.reason.value = reason;
  $("request-dialog").showModal();
  form.elements.reason.focus();
}

async function send(event) {
  event.preventDefault();
  if (!target) return;
  const form = event.target;
  const reason = form.elements.reason.value.trim();
  if (!reason) {
    $("request-error").textContent = "Say why: the person at the PC reads it before deciding.";
    form.elements.reason.focus();
    return;
  }
  const body = { agent_id: target.id, kind: form.elements.kind.value, reason };
  const code = form.elements.help_code.value.replace(/\D/g, "");
  if (code) body.help_code = code;
  const sendButton = $("request-send");
  sendButton.disabled = true;
  try {
    const session = await api("POST", "/api/v1/sessions", body);
    state.sessions.set(session.id, { hostname: target.hostname, ...session });
    form.hidden = true;
    $("request-sent").hidden = false;
    $("sent-host").textContent = target.hostname;
    $("sent-phrase").textContent = session.phrase || "";
    const open = $("sent-open");
    open.href = sessionPage(session);
    open.focus();
    onSent(session);
  } catch (error) {
    $("request-error").textContent = error.message;
  } finally {
    sendButton.disabled = false;
  }
}

export function closeRequest() {
  const dialog = $("request-dialog");
  if (dialog.open) dialog.close();
}
