// @ts-check
// Machines: the fleet, live. Host name, user and OS are the agents' own words.

import { api, errorMessage } from "../lib/api.js";
import { $, badge, button, confirmAction, el, showEmpty, timeCell, toast } from "../lib/dom.js";
import { detailsRow } from "./machine-details.js";
import { openRequest } from "./request.js";
import { t } from "../lib/i18n.js";
import { isAdmin, state } from "./state.js";

/** @typedef {import("./state.js").Agent} Agent */
/** @type {Set<string>} machines whose details are open */
const opened = new Set();

export function setupMachines() {
  $("machines-search").addEventListener("input", renderMachines);
  $("machines-group").addEventListener("change", renderMachines);
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
  else state.agents.set(agent.id, { groups: state.agents.get(agent.id)?.groups, ...agent });
}

/**
 * @param {Agent} agent
 * @param {string} query
 * @param {string} filter
 */
function matches(agent, query, filter) {
  const group = $("machines-group", HTMLSelectElement).value;
  if (group && !(agent.groups || []).includes(group)) return false;
  if (filter === "online" && !agent.online) return false;
  if (filter === "offline" && agent.online) return false;
  if (!query) return true;
  return [agent.hostname, agent.user, agent.os, agent.id, agent.version, ...(agent.groups || [])].some((value) =>
    String(value || "").toLowerCase().includes(query));
}

export function renderMachines() {
  const query = $("machines-search", HTMLInputElement).value.trim().toLowerCase();
  const checked = document.querySelector('input[name="machines-filter"]:checked');
  const filter = checked instanceof HTMLInputElement ? checked.value : "all";
  const all = [...state.agents.values()].sort((a, b) =>
    Number(b.online) - Number(a.online) || String(a.hostname).localeCompare(String(b.hostname)));
  groupChoices(all);
  const shown = all.filter((agent) => matches(agent, query, filter));
  $("machines-rows").replaceChildren(...shown.flatMap((agent) =>
    opened.has(agent.id) ? [row(agent), detailsRow(agent, 7, renderMachines)] : [row(agent)]));
  const online = all.filter((agent) => agent.online).length;
  $("machines-summary").textContent = t(all.length === 1 ? "machines.summary_one" : "machines.summary", {
    count: all.length, online,
  });
  const none = all.length === 0 ? t("machines.none") : t("machines.no_match");
  showEmpty("machines-empty", shown.length === 0, none);
}

/** @param {Agent[]} all the group filter offers the groups in use */
function groupChoices(all) {
  const select = $("machines-group", HTMLSelectElement);
  const chosen = select.value;
  const names = [...new Set(all.flatMap((agent) => agent.groups || []))].sort();
  select.replaceChildren(el("option", { text: "All groups", attrs: { value: "" } }),
    ...names.map((name) => el("option", { text: name, attrs: { value: name } })));
  select.value = names.includes(chosen) ? chosen : "";
}

/** @param {Agent} agent */
function toggleDetails(agent) {
  if (opened.has(agent.id)) opened.delete(agent.id);
  else opened.add(agent.id);
  renderMachines();
}

/** @param {Agent} agent */
function row(agent) {
  const offline = !agent.online;
  return el("tr", { attrs: { "data-agent": agent.id }, cls: offline ? "dim" : "" }, [
    el("td", {}, [badge(agent.online ? t("machines.online") : t("machines.offline"), agent.online ? "ok" : "off")]),
    el("td", {}, [
      el("div", { cls: "host", text: agent.hostname }),
      el("div", { cls: "sub mono", text: agent.id }),
      agent.groups && agent.groups.length ? el("div", { cls: "groups", text: agent.groups.join(", ") }) : null,
    ]),
    el("td", { text: signedIn(agent) }),
    el("td", { cls: "os", text: agent.os || "—" }),
    versionCell(agent),
    agent.online ? el("td", { cls: "nowrap", text: t("time.now") }) : timeCell(agent.last_seen, t("time.never")),
    el("td", { cls: "actions" }, [
      button(t("machines.details"), () => toggleDetails(agent), "small ghost", {
        "aria-expanded": opened.has(agent.id) ? "true" : "false",
        "aria-label": t("machines.details_label", { host: agent.hostname }),
      }),
      button(t("machines.shell"), () => openRequest(agent, "shell"), "small", {
        disabled: offline, "aria-label": t("machines.shell_label", { host: agent.hostname }),
      }),
      button(t("machines.admin_shell"), () => openRequest(agent, "admin-shell"), "small", {
        disabled: offline || !agent.system || !agent.signed_in,
        "aria-label": t("machines.admin_shell_label", { host: agent.hostname }),
      }),
      button(t("machines.screen"), () => openRequest(agent, "screen"), "small", {
        disabled: offline || agent.screen === "none",
        "aria-label": t("machines.screen_label", { host: agent.hostname }),
        title: screenTitle(agent),
        "data-screen": agent.screen || "",
      }),
      isAdmin()
        ? button(t("machines.remove"), () => remove(agent), "small ghost danger-text", {
          "aria-label": t("machines.remove_label", { host: agent.hostname }),
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
  if (!agent.online) return t("machines.offline_title");
  if (agent.screen === "none") {
    return t("machines.no_screen", { problem: agent.screen_problem || t("machines.not_available") });
  }
  return agent.desktop ? t("machines.screen_of", { desktop: agent.desktop }) : "";
}

/**
 * "alice" / "nobody" for a machine service that is online; the agent's user otherwise.
 * @param {Agent} agent
 */
function signedIn(agent) {
  if (agent.online && agent.system) return agent.signed_in || t("machines.nobody");
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
