// @ts-check
// The audit log (admins): newest first, with the hash chain's verification status.

import { api } from "../lib/api.js";
import { $, el, fullTime } from "../lib/dom.js";

/**
 * One record as GET /api/v1/audit gives it.
 * @typedef {object} AuditRecord
 * @property {number} seq
 * @property {string} ts
 * @property {string} type
 * @property {string} code
 * @property {string} actor
 * @property {string} target
 * @property {Record<string, unknown>} [details]
 */

const PAGE = 200;
/** @type {AuditRecord[]} ascending by seq */
let records = [];
let oldest = 0;

export function setupAudit() {
  $("audit-search").addEventListener("input", renderAudit);
  $("audit-refresh").addEventListener("click", () => loadAudit().catch(() => {}));
  $("audit-older").addEventListener("click", () => loadOlder().catch(() => {}));
}

export async function loadAudit() {
  const status = $("audit-status");
  status.dataset.state = "checking";
  status.textContent = "Checking the chain…";
  const check = await api("GET", "/api/v1/audit/verify");
  showStatus(check);
  const after = Math.max(0, check.last_seq - PAGE);
  records = await api("GET", `/api/v1/audit?after=${after}&limit=${PAGE}`);
  oldest = after;
  renderAudit();
}

async function loadOlder() {
  if (oldest <= 0) return;
  const after = Math.max(0, oldest - PAGE);
  /** @type {AuditRecord[]} */
  const older = await api("GET", `/api/v1/audit?after=${after}&limit=${oldest - after}`);
  records = [...older, ...records];
  oldest = after;
  renderAudit();
}

/**
 * @param {{ok: boolean, count: number, last_seq: number, last_hash: string,
 *   first_bad_seq?: number, problem?: string}} check GET /api/v1/audit/verify
 */
function showStatus(check) {
  const status = $("audit-status");
  status.dataset.state = check.ok ? "ok" : "bad";
  status.replaceChildren();
  if (check.ok) {
    status.append(
      el("strong", { text: "Chain verified. " }),
      `${check.count} record${check.count === 1 ? "" : "s"}, none edited, none missing. Head `,
      el("code", { text: `${check.last_seq}:${String(check.last_hash).slice(0, 16)}…`, title: check.last_hash }),
      " — save it elsewhere to detect truncation later.",
    );
  } else {
    status.append(
      el("strong", { text: `Chain broken at record ${check.first_bad_seq}. ` }),
      `${check.problem}. The ${check.count} records before it are intact.`,
    );
  }
}

export function renderAudit() {
  const query = $("audit-search", HTMLInputElement).value.trim().toLowerCase();
  const shown = records
    .filter((r) => !query || JSON.stringify([r.type, r.code, r.actor, r.target, r.details]).toLowerCase().includes(query))
    .reverse();
  $("audit-rows").replaceChildren(...shown.map(row));
  $("audit-older").hidden = oldest <= 0;
}

/** @param {AuditRecord} record */
function row(record) {
  const when = Date.parse(record.ts) / 1000;
  const details = Object.keys(record.details || {}).length ? JSON.stringify(record.details) : "";
  const warn = ["failed", "refused", "throttled"].some((ending) => record.type.endsWith(ending));
  return el("tr", { cls: warn ? "warn-row" : "" }, [
    el("td", { cls: "mono", text: record.seq }),
    el("td", { cls: "nowrap", text: fullTime(when), title: record.ts }),
    el("td", {}, [el("div", { text: record.type }), el("div", { cls: "sub mono", text: record.code })]),
    el("td", { cls: "mono small", text: record.actor }),
    el("td", { cls: "mono small", text: record.target }),
    el("td", { cls: "details mono small", text: details, title: details }),
  ]);
}
