// @ts-check
// The audit log (admins): newest first, with the hash chain's verification status,
// what the broker's own checks found since it started, and where heads are anchored.
// Everything the broker reports (problems, paths, errors, record details) is shown
// as text only: textContent and text nodes, never markup. The words around them are
// the console's language (t/tn); the records themselves (types, codes, ISO times,
// details) stay as the log holds them.

import { api } from "../lib/api.js";
import { $, el, fullTime, plain } from "../lib/dom.js";
import { locale, t, tn } from "../lib/i18n.js";

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
  status.textContent = t("audit.checking");
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
 * A translated sentence with nodes in it: each `{name}` of `text` becomes `parts[name]`
 * (a node, a string or several of them), the rest stays text.
 * @param {string} text
 * @param {Record<string, Node | string | (Node | string)[]>} parts
 * @returns {(Node | string)[]}
 */
function fill(text, parts) {
  return text.split(/(\{[a-z_]+\})/).flatMap((piece) => {
    const name = /^\{([a-z_]+)\}$/.exec(piece)?.[1];
    if (name && Object.hasOwn(parts, name)) return parts[name];
    return piece ? [piece] : [];
  });
}

/**
 * A broker timestamp (ISO, UTC) in the reader's words, the exact one as a tooltip.
 * @param {unknown} iso
 */
function stamp(iso) {
  const text = plain(iso, 64);
  const when = Date.parse(text);
  return el("time", {
    text: Number.isFinite(when) ? fullTime(when / 1000) : text || t("audit.unknown_time"),
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
      el("strong", { text: t("audit.verified") }),
      " ",
      ...fill(tn("audit.verified_count", count), { head: head(check.last_seq, check.last_hash) }),
    );
  } else {
    status.append(
      el("strong", { text: t("audit.broken_at", { seq: plain(check.first_bad_seq, 20) }) }),
      " ",
      tn("audit.intact", count, { problem: sentence(check.problem) }),
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
      el("strong", { text: t("audit.started_broken") }),
      " ",
      ...fill(t("audit.started_broken_detail"), {
        time: stamp(startup.at),
        recorded: recorded(startup.record_seq, "audit.recorded_as_record"),
      }),
      el("span", { cls: "sub", text: t("audit.startup_check",
        { walked: walked(startup), problem: sentence(startup.problem) }) }),
    ]));
  }
  const sameBreak = check.started_broken && startup && full
    && startup.first_bad_seq === full.first_bad_seq;
  if (full && !full.ok && !sameBreak) {
    box.append(alarm("audit-full-broken", [
      el("strong", { text: t("audit.full_broken") }),
      " ",
      ...fill(t("audit.full_broken_detail"), {
        time: stamp(full.at),
        recorded: recorded(full.record_seq, "audit.recorded_as"),
      }),
      el("span", { cls: "sub", text: t("audit.full_check", { problem: sentence(full.problem) }) }),
    ]));
  }
  if (check.full_state === "running") {
    box.append(el("div", { cls: "banner note", attrs: { id: "audit-full-running" },
      text: t("audit.full_running") }));
  } else if (check.full_state === "failed") {
    box.append(alarm("audit-full-failed", [
      el("strong", { text: t("audit.full_failed") }),
      " ",
      t("audit.full_failed_detail", { reason: plain(check.full_error, TEXT_MAX) || t("audit.no_reason") }),
    ]));
  }
}

/**
 * A broker's problem as a sentence of its own.
 * @param {unknown} text
 */
function sentence(text) {
  const words = plain(text, TEXT_MAX) || t("audit.no_reason");
  return `${words.charAt(0).toUpperCase()}${words.slice(1)}${/[.!?]$/.test(words) ? "" : "."}`;
}

/**
 * Which records a check walked, in words.
 * @param {ChainCheck} check
 */
function walked(check) {
  return check.scope === "tail"
    ? t("audit.walked_tail", { seq: plain(check.from_seq, 20) })
    : t("audit.walked_full");
}

/**
 * "… #SEQ (audit.chain_broken)." or that it could not be recorded.
 * @param {number | null | undefined} seq
 * @param {string} key the sentence with {record} in it
 * @returns {(Node | string)[]}
 */
function recorded(seq, key) {
  if (seq === null || seq === undefined) return [t("audit.not_recorded")];
  return fill(t(key), { record: el("code", { text: `#${plain(seq, 20)}` }) });
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
  const checkedNow = tn("audit.anchors_checked", checked);
  const line = el("p", { cls: "anchor-line" });
  if (!anchoring) {
    line.append(t("audit.not_anchored", { checked: checkedNow }));
  } else {
    const every = Number(anchoring.every) || 0;
    /** @type {(Node | string)[]} */
    let where = [anchoring.syslog ? t("audit.where_syslog") : t("audit.where_nowhere")];
    if (anchoring.file) {
      const file = el("code", { cls: "path", text: plain(anchoring.file, TEXT_MAX) });
      where = anchoring.syslog ? fill(t("audit.where_file_and_syslog"), { file }) : [file];
    }
    const last = anchoring.last_seq !== null && anchoring.last_seq !== undefined
      ? fill(t("audit.last_anchored"), {
        head: head(anchoring.last_seq, anchoring.last_hash), time: stamp(anchoring.last_at) })
      : [t("audit.none_anchored")];
    line.append(...fill(tn("audit.anchored_every", every), { where, last, checked: checkedNow }));
  }
  box.append(line);
  const failures = Number(anchoring?.failures) || 0;
  if (anchoring && failures > 0) {
    box.append(el("p", { cls: "anchor-warn", attrs: { role: "alert" } }, [
      el("strong", { text: tn("audit.anchor_failures", failures) }),
      " ",
      t("audit.last_error", { error: plain(anchoring.last_error, TEXT_MAX) || t("audit.none_given") }),
    ]));
  }
  if (check.anchors_error) {
    box.append(el("p", { cls: "anchor-warn", attrs: { role: "alert" } }, [
      el("strong", { text: t("audit.anchors_unreadable") }),
      " ",
      t("audit.anchors_unreadable_detail", { error: plain(check.anchors_error, TEXT_MAX) }),
    ]));
  }
  box.append(el("p", { cls: "muted small", text: t("audit.anchor_advice") }));
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
    return date.toLocaleTimeString(locale, { hour: "numeric", minute: "2-digit", second: "2-digit" });
  }
  return date.toLocaleString(locale, { dateStyle: "medium", timeStyle: "medium" });
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
    let words = t("audit.flapping", {
      connects: tn("audit.connects", connects),
      disconnects: tn("audit.disconnects", disconnects),
      since: flapTime(d.since),
      until: flapTime(d.until, d.since),
    });
    if (d.state) words = `${plain(d.state, 20)}: ${words}`;  // the log's own word
    if (d.state === "settled") words += d.online ? t("audit.settled_online") : t("audit.settled_offline");
    if (d.remote) words += t("audit.last_from", { remote: plain(d.remote, 100) });
    return words;
  }
  if (record.type === "audit.chain_broken") {
    return t("audit.chain_broken_detail", {
      seq: plain(d.first_bad_seq, 20),
      problem: plain(d.problem, TEXT_MAX),
      by: d.found_by === "startup" ? t("audit.found_by_startup") : plain(d.found_by, 40),
    });
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
