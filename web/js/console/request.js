// @ts-check
// The dialog in which a technician asks for a shell or the screen, with a reason.

import { api, errorMessage } from "../lib/api.js";
import { $, field } from "../lib/dom.js";
import { sessionPage } from "../lib/session-states.js";
import { t } from "../lib/i18n.js";
import { state } from "./state.js";

/** @typedef {import("../lib/session-states.js").Session} Session */
/** @typedef {Pick<import("./state.js").Agent, "id" | "hostname" | "user" | "os" | "screen" | "monitors" | "all_monitors">} Target */

/** @type {Target | null} */
let target = null;
/** @type {(session: Session) => void} */
let onSent = () => {};

/** @param {(session: Session) => void} afterSent */
export function setupRequest(afterSent) {
  onSent = afterSent;
  const dialog = $("request-dialog", HTMLDialogElement);
  $("request-form").addEventListener("submit", send);
  $("request-cancel").addEventListener("click", () => dialog.close());
  $("request-kind").addEventListener("change", showMonitors);
  dialog.addEventListener("close", () => {
    target = null;
  });
}

/** The "What" radios: shell or screen. */
function kindRadios() {
  const radios = $("request-form", HTMLFormElement).elements.namedItem("kind");
  if (!(radios instanceof RadioNodeList)) throw new Error("the request form has no kind");
  return radios;
}

/**
 * @param {Target} agent
 * @param {import("../lib/session-states.js").SessionKind} [kind]
 * @param {string} [helpCode]
 * @param {string} [reason]
 */
export function openRequest(agent, kind = "shell", helpCode = "", reason = "") {
  target = agent;
  const form = $("request-form", HTMLFormElement);
  form.reset();
  form.hidden = false;
  $("request-sent").hidden = true;
  $("request-error").textContent = "";
  $("request-title").textContent = t("request.title_host", { host: agent.hostname });
  $("request-about").textContent = [agent.user && t("request.user", { user: agent.user }), agent.os]
    .filter(Boolean).join(" · ");
  kindRadios().value = kind;
  fillMonitors(agent);
  field(form, "help_code").value = helpCode;
  field(form, "reason").value = reason;
  $("request-dialog", HTMLDialogElement).showModal();
  field(form, "reason").focus();
}

/** @param {SubmitEvent} event */
async function send(event) {
  event.preventDefault();
  if (!target) return;
  const form = $("request-form", HTMLFormElement);
  const reason = field(form, "reason").value.trim();
  if (!reason) {
    $("request-error").textContent = t("request.say_why");
    field(form, "reason").focus();
    return;
  }
  /** @type {{agent_id: string, kind: string, reason: string, help_code?: string, ticket?: string, monitor?: string, view_only?: boolean}} */
  const body = { agent_id: target.id, kind: kindRadios().value, reason };
  if (body.kind === "files-view") Object.assign(body, { kind: "files", view_only: true }); // read-only SFTP
  if (body.kind === "screen" && !$("request-monitor-row").hidden) body.monitor = monitorSelect().value;
  const ticket = field(form, "ticket").value.trim();
  if (ticket) body.ticket = ticket;
  const code = field(form, "help_code").value.replace(/\D/g, "");
  if (code) body.help_code = code;
  const sendButton = $("request-send", HTMLButtonElement);
  sendButton.disabled = true;
  const host = target.hostname;
  try {
    /** @type {Session} */
    const session = await api("POST", "/api/v1/sessions", body);
    state.sessions.set(session.id, session);
    form.hidden = true;
    $("request-sent").hidden = false;
    $("sent-host").textContent = host;
    $("sent-phrase").textContent = session.phrase || "";
    const open = $("sent-open", HTMLAnchorElement);
    open.href = sessionPage(session);
    open.focus();
    onSent(session);
  } catch (error) {
    $("request-error").textContent = errorMessage(error);
  } finally {
    sendButton.disabled = false;
  }
}

function monitorSelect() {
  return $("request-monitor", HTMLSelectElement);
}

/**
 * The monitor picker: the PC's monitors (the primary one chosen, as MeshCentral and
 * RustDesk do), and "All monitors" (every engine: x11vnc, one wayvnc per output, the
 * portal's streams) when its agent says it can. On the GNOME portal the list carries the monitors only to say
 * there are several: the person at the PC picks in the desktop's dialog, so the
 * choice there is that pick or all.
 * Only when there is a choice: one monitor, or none reported (KDE), sends no monitor.
 * @param {Target} agent
 */
function fillMonitors(agent) {
  const monitors = agent.monitors || [];
  const portal = agent.screen === "portal";
  const options = portal
    ? [new Option(t("request.monitor_at_pc"), "")]
    : monitors.map((m) => {
        const key = m.primary ? "request.monitor_primary" : "request.monitor_size";
        return new Option(t(key, { name: m.name, width: m.width, height: m.height }), m.name);
      });
  // every engine shows them all (#15), when the PC's agent is new enough to
  if (agent.all_monitors) options.push(new Option(t("request.all_monitors"), "all"));
  monitorSelect().replaceChildren(...options);
  const primary = monitors.find((m) => m.primary) || monitors[0];
  if (primary && !portal) monitorSelect().value = primary.name;
  $("request-monitor-note").textContent = portal ? t("request.picked_at_pc") : "";
  $("request-monitor-row").dataset.choice = monitors.length > 1 ? "yes" : "";
  showMonitors();
}

/** The picker shows for a screen request to a PC with more than one monitor. */
function showMonitors() {
  const row = $("request-monitor-row");
  row.hidden = !(kindRadios().value === "screen" && row.dataset.choice === "yes");
}

export function closeRequest() {
  const dialog = $("request-dialog", HTMLDialogElement);
  if (dialog.open) dialog.close();
}
