// @ts-check
// One machine's details, under its row: groups (admins edit them) and the
// inventory its machine service reported (OS, kernel, disk, memory, last boot,
// installed packages). All of it is the PC's own words: text only.

import { api, errorMessage } from "../lib/api.js";
import { badge, button, el, fullTime, toast } from "../lib/dom.js";
import { isAdmin, state } from "./state.js";

/**
 * @typedef {object} Inventory
 * @property {string} [os]
 * @property {string} [kernel]
 * @property {number} [disk_total]
 * @property {number} [disk_free]
 * @property {number} [memory_total]
 * @property {number} [last_boot]
 * @property {number} [package_count]
 * @property {string[]} [packages]
 */

/** @param {number | undefined} bytes */
function size(bytes) {
  if (!bytes) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

/**
 * The details row for a machine (a <tr> spanning the table), filled when it arrives.
 * @param {import("./state.js").Agent} agent
 * @param {number} columns
 * @param {() => void} changed called after the groups were saved
 */
export function detailsRow(agent, columns, changed) {
  const body = el("div", { cls: "machine-details" }, [el("p", { cls: "muted", text: "Loading…" })]);
  const tr = el("tr", { cls: "details", attrs: { "data-details": agent.id } }, [
    el("td", { attrs: { colspan: columns } }, [body]),
  ]);
  api("GET", `/api/v1/agents/${encodeURIComponent(agent.id)}/inventory`)
    .then((found) => body.replaceChildren(...content(agent, found, changed)))
    .catch((error) => body.replaceChildren(el("p", { cls: "error", text: errorMessage(error) })));
  return tr;
}

/**
 * @param {import("./state.js").Agent} agent
 * @param {{groups: string[], inventory: Inventory, updated: number | null}} found
 * @param {() => void} changed
 */
function content(agent, found, changed) {
  const inv = found.inventory || {};
  const facts = [
    ["OS", inv.os || "—"],
    ["Kernel", inv.kernel || "—"],
    ["Disk", inv.disk_total ? `${size(inv.disk_free)} free of ${size(inv.disk_total)}` : "—"],
    ["Memory", size(inv.memory_total)],
    ["Last boot", inv.last_boot ? fullTime(inv.last_boot) : "—"],
    ["Reported", found.updated ? fullTime(found.updated) : "never (not a machine service, or not yet)"],
  ];
  const packages = inv.packages || [];
  return [
    el("dl", { cls: "facts" }, facts.flatMap(([name, value]) => [el("dt", { text: name }), el("dd", { text: value })])),
    groupsEditor(agent, found.groups || [], changed),
    el("details", {}, [
      el("summary", { text: `Installed packages (${inv.package_count ?? packages.length})` }),
      el("pre", { cls: "output", text: packages.join("\n") }),
    ]),
  ];
}

/**
 * @param {import("./state.js").Agent} agent
 * @param {string[]} groups
 * @param {() => void} changed
 */
function groupsEditor(agent, groups, changed) {
  const shown = el("p", {}, ["Groups: ", ...(groups.length ? groups.map((g) => badge(g, "")) : ["none"])]);
  if (!isAdmin()) return shown;
  const input = el("input", {
    attrs: { value: groups.join(", "), "aria-label": `Groups of ${agent.hostname}`, maxlength: 1400,
      placeholder: "Namur office, accounting" },
  });
  const save = async () => {
    const names = input.value.split(",").map((name) => name.trim()).filter(Boolean);
    try {
      const done = await api("PATCH", `/api/v1/agents/${encodeURIComponent(agent.id)}`, { groups: names });
      const known = state.agents.get(agent.id);
      if (known) known.groups = done.groups;
      toast(`Groups of ${agent.hostname} saved.`, "ok");
      changed();
    } catch (error) {
      toast(errorMessage(error), "error");
    }
  };
  return el("div", { cls: "form-inline" }, [shown, input, button("Save groups", save, "small")]);
}
