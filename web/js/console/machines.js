// @ts-check
// Machines: the fleet, live. Host name, user and OS are the agents' own words.

import { api, errorMessage } from "../lib/api.js";
import { $, badge, button, confirmAction, el, showEmpty, timeCell, toast } from "../lib/dom.js";
import { openRequest } from "./request.js";
import { isAdmin, state } from "./state.js";

/** @typedef {import("./state.js").Agent} Agent */

export function setupMachines() {
  $("machines-search").addEventListener("input", renderMachines);
  for (const radio of document.querySelectorAll('input[name="machines-filter"]')) {
    radio.addEventListener("change", renderMachines);
  }
}

export async function loadMachines() {
  /** @type {Agent[]} */
  const rows = await api("GET", "/api/v1/agents");
  state.agents = new Map(rows.map((agent) => [agent.id, agent]));
}

/** @param {Agent | null | undefined} agent as the live feed reports it */
export function agentChanged(agent) {
  if (!agent || typeof agent.id !== "string") return;
  if (agent.removed) state.agents.delete(agent.id);
  else state.agents.set(agent.id, agent);
}

/**
 * @param {Agent} agent
 * @param {string} query
 * @param {string} filter
 */
function matches(agent, query, filter) {
  if (filter === "online" && !agent.online) return false;
  if (filter === "offline" && agent.online) return false;
  if (!query) return true;
  return [agent.hostname, agent.user, agent.os, agent.id, agent.version].some((value) =>
    String(value || "").toLowerCase().includes(query));
}

export function renderMachines() {
  const query = $("machines-search", HTMLInputElement).value.trim().toLowerCase();
  const checked = document.querySelector('input[name="machines-filter"]:checked');
  const filter = checked instanceof HTMLInputElement ? checked.value : "all";
  const all = [...state.agents.values()].sort((a, b) =>
    Number(b.online) - Number(a.online) || String(a.hostname).localeCompare(String(b.hostname)));
  const shown = all.filter((agent) => matches(agent, query, filter));
  $("machines-rows").replaceChildren(...shown.map(row));
  const online = all.filter((agent) => agent.online).length;
  $("machines-summary").textContent =
    `${all.length} machine${all.length === 1 ? "" : "s"} · ${online} online`;
  const none = all.length === 0
    ? "No machines yet. An admin adds them from Enrolment: a token, then one command on the PC."
    : "No machine matches the search.";
  showEmpty("machines-empty", shown.length === 0, none);
}

/** @param {Agent} agent */
function row(agent) {
  const offline = !agent.online;
  return el("tr", { attrs: { "data-agent": agent.id }, cls: offline ? "dim" : "" }, [
    el("td", {}, [badge(agent.online ? "Online" : "Offline", agent.online ? "ok" : "off")]),
    el("td", {}, [
      el("div", { cls: "host", text: agent.hostname }),
      el("div", { cls: "sub mono", text: agent.id }),
    ]),
    el("td", { text: signedIn(agent) }),
    el("td", { cls: "os", text: agent.os || "—" }),
    versionCell(agent),
    agent.online ? el("td", { cls: "nowrap", text: "now" }) : timeCell(agent.last_seen, "never"),
    el("td", { cls: "actions" }, [
      button("Shell…", () => openRequest(agent, "shell"), "small", {
        disabled: offline, "aria-label": `Ask for a shell on ${agent.hostname}`,
      }),
      button("Admin shell…", () => openRequest(agent, "admin-shell"), "small", {
        disabled: offline || !agent.system || !agent.signed_in,
        "aria-label": `Ask for an administrator (root) shell on ${agent.hostname}`,
      }),
      button("Screen…", () => openRequest(agent, "screen"), "small", {
        disabled: offline || agent.screen === "none",
        "aria-label": `Ask for the screen of ${agent.hostname}`,
        title: screenTitle(agent),
        "data-screen": agent.screen || "",
      }),
      isAdmin()
        ? button("Remove", () => remove(agent), "small ghost danger-text", {
          "aria-label": `Remove ${agent.hostname}`,
        })
        : null,
    ]),
  ]);
}

// What the broker says of an agent's version (console/api/fleet.py, model/agent_version.py).
const VERSION_FLAGS = {
  outdated: ["Outdated", "wait", "Older than this broker: update allowhelp on this PC."],
  unsupported: ["Unsupported", "bad",
    "Older than the oldest agent this broker supports: update allowhelp on this PC now."],
  unknown: ["Unknown", "bad", "The agent reports no version this broker can read."],
};

/** @param {Agent} agent the version as plain text, and a badge when it is behind */
function versionCell(agent) {
  const status = agent.version_status || "current";
  const flag = status === "current" ? null : VERSION_FLAGS[status];
  return el("td", { cls: "nowrap", attrs: { "data-version-status": status } }, [
    el("span", { cls: "mono", text: agent.version || "—" }),
    flag ? " " : null,
    flag ? el("span", { cls: `badge ${flag[1]}`, text: flag[0], title: flag[2] }) : null,
  ]);
}

/**
 * Why "Screen…" is off ("Wayland session without a screen-cast portal"), or what it uses.
 * @param {Agent} agent
 */
function screenTitle(agent) {
  if (!agent.online) return "The machine is offline.";
  if (agent.screen === "none") return `No screen: ${agent.screen_problem || "not available"}`;
  return agent.desktop ? `Screen of the ${agent.desktop} session` : "";
}

/**
 * "alice" / "nobody" for a machine service that is online; the agent's user otherwise.
 * @param {Agent} agent
 */
function signedIn(agent) {
  if (agent.online && agent.system) return agent.signed_in || "nobody";
  return agent.user || "—";
}

/** @param {Agent} agent */
async function remove(agent) {
  const sure = await confirmAction(
    `Remove ${agent.hostname}?`,
    "Its key is refused from now on and its connection is dropped. To bring it back, enrol it again with a new token.",
    "Remove machine",
  );
  if (!sure) return;
  try {
    await api("DELETE", `/api/v1/agents/${encodeURIComponent(agent.id)}`);
    state.agents.delete(agent.id);
    renderMachines();
    toast(`${agent.hostname} was removed.`);
  } catch (error) {
    toast(errorMessage(error), "error");
  }
}
