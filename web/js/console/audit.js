// @ts-check
// The audit log (admins): newest first, with the hash chain's verification status,
// what the broker's own checks found since it started, and where heads are anchored.
// Everything the broker reports (problems, paths, errors, record details) is shown
// as text only: textContent and text nodes, never markup.

import { api } from "../lib/api.js";
import { $, el, fullTime, plain } from "../lib/dom.js";

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

/**
 * One check of the chain by the broker (allowhelp/broker/audit/status.py ChainCheck).
 * @typedef {object} ChainCheck
 * @property {boolean} ok
 * @property {"full" | "tail"} scope
 * @property {number} from_seq
 * @property {number} last_seq
 * @property {number | null} first_bad_seq
 * @property {string} problem
 * @property {number} anchors_checked
 * @property {number} seconds
 * @property {string} at
 * @property {number | null} record_seq the audit.chain_broken record about it
 */

/**
 * Where heads are anchored (status.py AnchorState).
 * @typedef {object} AnchorState
 * @property {string | null} file
 * @property {number} every
 * @property {boolean} syslog
 * @property {number | null} last_seq
 * @property {string | null} last_hash
 * @property {string | null} last_at
 * @property {number} failures
 * @property {string} last_error
 */

/**
 * GET /api/v1/audit/verify (allowhelp/broker/console/api/fleet.py).
 * @typedef {object} VerifyAnswer
 * @property {boolean} ok
 * @property {number} count
 * @property {number} last_seq
 * @property {string} last_hash
 * @property {number | null} first_bad_seq
 * @property {string} problem
 * @property {number} [anchors_checked]
 * @property {string} [anchors_error]
 * @property {AnchorState | null} [anchoring]
 * @property {ChainCheck | null} [startup]
 * @property {ChainCheck | null} [full]
 * @property {"not needed" | "running" | "done" | "failed"} [full_state]
 * @property {string} [full_error]
 * @property {boolean} [started_broken]
 * @property {ChainCheck | null} [broken]
 */

const PAGE = 200;
const MAX_LIMIT = 1000; // what GET /api/v1/audit gives at most per call
const TEXT_MAX = 500; // hostile text shown at most this long
const ANCHOR_ADVICE =
  "Anchors only catch a rewrite if kept off this machine (--audit-anchors on another host, or --syslog).";
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
  /** @type {VerifyAnswer} */
  const check = await api("GET", "/api/v1/audit/verify");
  showStatus(check);
  showChecks(check);
  showAnchoring(check);
  // On a broken chain last_seq is the last good record, not the head: the records
  // after it (the audit.chain_broken one among them) are read onwards from there.
  const after = Math.max(0, newestKnown(check) - PAGE);
  records = await recordsFrom(after);
  oldest = after;
  renderAudit();
}

/**
 * The highest seq the answer names.
 * @param {VerifyAnswer} check
 */
function newestKnown(check) {
  const seqs = [check.last_seq, check.startup?.last_seq, check.startup?.record_seq,
    check.full?.last_seq, check.full?.record_seq, check.anchoring?.last_seq];
  return Math.max(0, ...seqs.map(Number).filter(Number.isFinite));
}

/**
 * Every record after `after`, in pages, up to the head.
 * @param {number} after
 * @returns {Promise<AuditRecord[]>}
 */
async function recordsFrom(after) {
  /** @type {AuditRecord[]} */
  const all = [];
  let from = after;
  for (let pages = 0; pages < 20; pages += 1) {
    /** @type {AuditRecord[]} */
    const page = await api("GET", `/api/v1/audit?after=${from}&limit=${MAX_LIMIT}`);
    if (!Array.isArray(page) || page.length === 0) break;
    all.push(...page);
    from = Number(page[page.length - 1].seq);
    if (page.length < MAX_LIMIT || !Number.isFinite(from)) break;
  }
  return all;
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
 * A broker timestamp (ISO, UTC) in the reader's words, the exact one as a tooltip.
 * @param {unknown} iso
 */
function stamp(iso) {
  const text = plain(iso, 64);
  const when = Date.parse(text);
  return el("time", {
    text: Number.isFinite(when) ? fullTime(when / 1000) : text || "an unknown time",
    title: text,
    attrs: { datetime: Number.isFinite(when) ? text : null },
  });
}

/**
 * `SEQ:HASH…` with the whole hash as a tooltip.
 * @param {unknown} seq
 * @param {unknown} hash
 */
function head(seq, hash) {
  const full = plain(hash, 128);
  return el("code", { text: `${plain(seq, 20)}:${full.slice(0, 16)}…`, title: full });
}

/** @param {VerifyAnswer} check */
function showStatus(check) {
  const status = $("audit-status");
  status.dataset.state = check.ok ? "ok" : "bad";
  status.replaceChildren();
  const count = Number(check.count) || 0;
  if (check.ok) {
    status.append(
      el("strong", { text: "Chain verified. " }),
      `${count} record${count === 1 ? "" : "s"}, none edited, none missing. Head `,
      head(check.last_seq, check.last_hash),
      ".",
    );
  } else {
    status.append(
      el("strong", { text: `Chain broken at record ${plain(check.first_bad_seq, 20)}. ` }),
      `${sentence(check.problem)} The ${count} record${count === 1 ? "" : "s"} before it `
        + `${count === 1 ? "is" : "are"} intact.`,
    );
  }
}

/**
 * What the broker's start-up check and its full check after start found.
 * @param {VerifyAnswer} check
 */
function showChecks(check) {
  const box = $("audit-checks");
  box.replaceChildren();
  const { startup, full } = check;
  if (check.started_broken && startup) {
    box.append(alarm("audit-started-broken", [
      el("strong", { text: "The broker started on a broken chain " }),
      "(found at start-up, ", stamp(startup.at), ") and kept serving; ",
      ...recorded(startup.record_seq, "the break is recorded as audit record "),
      el("span", { cls: "sub", text: `Start-up check (${walked(startup)}): ${sentence(startup.problem)}` }),
    ]));
  }
  const sameBreak = check.started_broken && startup && full
    && startup.first_bad_seq === full.first_bad_seq;
  if (full && !full.ok && !sameBreak) {
    box.append(alarm("audit-full-broken", [
      el("strong", { text: "Break found by the full check after start " }),
      "(", stamp(full.at), "), ",
      ...recorded(full.record_seq, "recorded as "),
      el("span", { cls: "sub", text: `Full check: ${sentence(full.problem)}` }),
    ]));
  }
  if (check.full_state === "running") {
    box.append(el("div", { cls: "banner note", attrs: { id: "audit-full-running" },
      text: "Checking older records in the background…" }));
  } else if (check.full_state === "failed") {
    box.append(alarm("audit-full-failed", [
      el("strong", { text: "The background check of older records could not run: " }),
      plain(check.full_error, TEXT_MAX) || "no reason given",
      ". Run allowhelp-broker audit verify on the data folder.",
    ]));
  }
}

/**
 * A broker's problem as a sentence of its own.
 * @param {unknown} text
 */
function sentence(text) {
  const words = plain(text, TEXT_MAX) || "no reason given";
  return `${words.charAt(0).toUpperCase()}${words.slice(1)}${/[.!?]$/.test(words) ? "" : "."}`;
}

/**
 * Which records a check walked, in words.
 * @param {ChainCheck} check
 */
function walked(check) {
  return check.scope === "tail"
    ? `records after ${plain(check.from_seq, 20)}, the last anchored head that matched`
    : "the whole chain";
}

/**
 * "… #SEQ (audit.chain_broken)." or that it could not be recorded.
 * @param {number | null | undefined} seq
 * @param {string} lead
 * @returns {(Node | string)[]}
 */
function recorded(seq, lead) {
  if (seq === null || seq === undefined) {
    return ["the break could not be recorded in the chain (see the broker's log)."];
  }
  return [lead, el("code", { text: `#${plain(seq, 20)}` }), " (audit.chain_broken)."];
}

/**
 * @param {string} id
 * @param {(Node | string)[]} children
 */
function alarm(id, children) {
  return el("div", { cls: "banner warn", attrs: { id, role: "alert" } }, children);
}

/**
 * Where heads are anchored, the last one, and how many were checked just now.
 * @param {VerifyAnswer} check
 */
function showAnchoring(check) {
  const box = $("audit-anchoring");
  box.replaceChildren();
  const anchoring = check.anchoring;
  const checked = Number(check.anchors_checked) || 0;
  const checkedNow = `${checked} anchored head${checked === 1 ? "" : "s"} checked now.`;
  const line = el("p", { cls: "anchor-line" });
  if (!anchoring) {
    line.append("Heads are not anchored by this broker; ", checkedNow);
  } else {
    const every = Number(anchoring.every) || 0;
    line.append(`Head anchored every ${every} record${every === 1 ? "" : "s"} to `);
    if (anchoring.file) {
      line.append(el("code", { cls: "path", text: plain(anchoring.file, TEXT_MAX) }));
      if (anchoring.syslog) line.append(" and syslog");
    } else {
      line.append(anchoring.syslog ? "syslog" : "nowhere");
    }
    line.append("; ");
    if (anchoring.last_seq !== null && anchoring.last_seq !== undefined) {
      line.append("last ", head(anchoring.last_seq, anchoring.last_hash), " at ", stamp(anchoring.last_at));
    } else {
      line.append("none anchored since the broker started");
    }
    line.append("; ", checkedNow);
  }
  box.append(line);
  const failures = Number(anchoring?.failures) || 0;
  if (anchoring && failures > 0) {
    box.append(el("p", { cls: "anchor-warn", attrs: { role: "alert" } }, [
      el("strong", { text: `${failures} head${failures === 1 ? "" : "s"} could not be anchored. ` }),
      `Last error: ${plain(anchoring.last_error, TEXT_MAX) || "none given"}.`,
    ]));
  }
  if (check.anchors_error) {
    box.append(el("p", { cls: "anchor-warn", attrs: { role: "alert" } }, [
      el("strong", { text: "The anchored heads could not be read now: " }),
      `${plain(check.anchors_error, TEXT_MAX)}. The chain was checked without them.`,
    ]));
  }
  box.append(el("p", { cls: "muted small", text: ANCHOR_ADVICE }));
}

export function renderAudit() {
  const query = $("audit-search", HTMLInputElement).value.trim().toLowerCase();
  const shown = records
    .filter((r) => !query || JSON.stringify([r.type, r.code, r.actor, r.target, r.details]).toLowerCase().includes(query))
    .reverse();
  $("audit-rows").replaceChildren(...shown.map(row));
  $("audit-older").hidden = oldest <= 0;
}

/**
 * A broker timestamp in a flapping summary: the day once, then times to the second.
 * @param {unknown} iso
 * @param {unknown} [sameDayAs]
 */
function flapTime(iso, sameDayAs) {
  const text = plain(iso, 64);
  const when = Date.parse(text);
  if (!Number.isFinite(when)) return text || "?";
  const date = new Date(when);
  const other = Date.parse(plain(sameDayAs, 64));
  if (Number.isFinite(other) && new Date(other).toDateString() === date.toDateString()) {
    return date.toLocaleTimeString(undefined, { hour: "numeric", minute: "2-digit", second: "2-digit" });
  }
  return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
}

/**
 * The details cell's words: a summary for the records that have one, else the JSON.
 * @param {AuditRecord} record
 */
function detailWords(record) {
  const d = record.details || {};
  if (record.type === "agent.flapping") {
    const connects = Number(d.connects) || 0;
    const disconnects = Number(d.disconnects) || 0;
    let words = `${connects} connect${connects === 1 ? "" : "s"}, ${disconnects} disconnect${disconnects === 1 ? "" : "s"}`
      + ` between ${flapTime(d.since)} and ${flapTime(d.until, d.since)}`;
    if (d.state) words = `${plain(d.state, 20)}: ${words}`;
    if (d.state === "settled") words += d.online ? ", settled online" : ", settled offline";
    if (d.remote) words += `; last from ${plain(d.remote, 100)}`;
    return words;
  }
  if (record.type === "audit.chain_broken") {
    return `Chain broken at record ${plain(d.first_bad_seq, 20)}: ${plain(d.problem, TEXT_MAX)}`
      + ` (found by the ${d.found_by === "startup" ? "start-up check" : plain(d.found_by, 40)})`;
  }
  return Object.keys(d).length ? JSON.stringify(d) : "";
}

/** @param {AuditRecord} record */
function row(record) {
  const when = Date.parse(record.ts) / 1000;
  const json = Object.keys(record.details || {}).length ? JSON.stringify(record.details) : "";
  const words = detailWords(record);
  const type = String(record.type);
  const broken = type === "audit.chain_broken";
  const warn = broken || ["failed", "refused", "throttled"].some((ending) => type.endsWith(ending));
  return el("tr", { cls: [warn ? "warn-row" : "", broken ? "broken-row" : ""].join(" ").trim(),
    attrs: { "data-seq": record.seq, "data-type": plain(type, 100) } }, [
    el("td", { cls: "mono", text: record.seq }),
    el("td", { cls: "nowrap", text: fullTime(when), title: record.ts }),
    el("td", {}, [el("div", { text: type }), el("div", { cls: "sub mono", text: record.code })]),
    el("td", { cls: "mono small", text: record.actor }),
    el("td", { cls: "mono small", text: record.target }),
    el("td", { cls: words === json ? "details mono small" : "details summary small", text: words, title: words === json ? json : `${words}\n${json}` }),
  ]);
}
