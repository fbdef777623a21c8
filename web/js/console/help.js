// @ts-check
// Help requests: people who asked first, with the code they read on the phone.

import { api } from "../lib/api.js";
import { $, button, el, showEmpty, timeCell } from "../lib/dom.js";
import { openRequest } from "./request.js";
import { t } from "../lib/i18n.js";
import { formatCode, state } from "./state.js";

/** @typedef {import("./state.js").HelpRequest} HelpRequest */

export async function loadHelp() {
  /** @type {HelpRequest[]} */
  const rows = await api("GET", "/api/v1/help-requests");
  state.help = new Map(rows.map((ticket) => [ticket.code, ticket]));
}

/** @param {HelpRequest | null | undefined} ticket as the live feed reports it */
export function helpChanged(ticket) {
  if (!ticket || typeof ticket.code !== "string") return;
  if (ticket.session_id || ticket.expires * 1000 < Date.now()) state.help.delete(ticket.code);
  else state.help.set(ticket.code, ticket);
}

function open() {
  const now = Date.now() / 1000;
  return [...state.help.values()]
    .filter((ticket) => !ticket.session_id && ticket.expires > now)
    .sort((a, b) => b.created - a.created);
}

export function updateHelpCount() {
  const count = open().length;
  const badge = $("help-count");
  badge.hidden = count === 0;
  badge.textContent = String(count);
  badge.setAttribute("aria-label", t("help.open_count", { count }));
}

export function renderHelp() {
  const tickets = open();
  $("help-rows").replaceChildren(...tickets.map(row));
  showEmpty("help-empty", tickets.length === 0);
  updateHelpCount();
}

/** @param {HelpRequest} ticket */
function row(ticket) {
  const known = state.agents.get(ticket.agent_id);
  const agent = known || { id: ticket.agent_id, hostname: ticket.hostname, online: false };
  const code = formatCode(ticket.code);
  const reason = (ticket.message ? `Help request ${code}: ${ticket.message}` : `Help request ${code}`).slice(0, 500);
  const offline = !(known && known.online);
  return el("tr", {}, [
    el("td", { cls: "code", text: code }),
    el("td", { cls: "host", text: ticket.hostname }),
    el("td", { cls: "message", text: ticket.message || "—" }),
    timeCell(ticket.created),
    timeCell(ticket.expires),
    el("td", { cls: "actions" }, [
      button(t("machines.shell"), () => openRequest(agent, "shell", code, reason), "small", { disabled: offline }),
      button(t("machines.screen"), () => openRequest(agent, "screen", code, reason), "small", { disabled: offline }),
    ]),
  ]);
}
