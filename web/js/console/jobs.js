// @ts-check
// Fleet jobs (admins): make one (a script or packages, for machines or a group),
// watch each PC's result arrive live, read its output. A job's script and every
// PC's output are hostile text: they reach the page only through textContent.

import { api, errorMessage } from "../lib/api.js";
import { $, badge, button, confirmAction, el, field, showEmpty, timeCell, toast } from "../lib/dom.js";
import { loadMachines } from "./machines.js";
import { state } from "./state.js";

/**
 * One PC's result, as GET /api/v1/jobs/{id} gives it.
 * @typedef {object} JobResult
 * @property {string} agent_id
 * @property {string} [hostname]
 * @property {string} state pending | succeeded | failed | timed_out | refused | expired
 * @property {number | null} exit_code
 * @property {string} output the end of what the PC printed (hostile text)
 * @property {number | null} started
 * @property {number | null} finished
 */
/**
 * A job, as GET /api/v1/jobs lists it (with `results` from GET /api/v1/jobs/{id}).
 * @typedef {object} Job
 * @property {string} id
 * @property {string} state awaiting_approval | running | done | cancelled
 * @property {string} action
 * @property {string} reason
 * @property {string} created_by
 * @property {number} created
 * @property {number} expires
 * @property {string[]} targets
 * @property {string[]} install
 * @property {string[]} remove
 * @property {string} [script]
 * @property {string[]} approved_by
 * @property {Record<string, number>} [counts]
 * @property {JobResult[]} [results]
 */

/** @type {Record<string, string>} */
const TONES = {
  succeeded: "ok", failed: "bad", timed_out: "bad", refused: "wait", expired: "off", pending: "wait",
  running: "wait", done: "ok", awaiting_approval: "wait", cancelled: "off",
};
/** @type {Map<string, Job>} */
const jobs = new Map();
/** @type {string | null} the job whose results are open */
let open = null;

export function setupJobs() {
  $("job-form").addEventListener("submit", create);
  for (const radio of document.querySelectorAll('input[name="job-action"]')) {
    radio.addEventListener("change", showAction);
  }
  $("job-close").addEventListener("click", () => { open = null; renderJobs(); });
  showAction();
}

export async function loadJobs() {
  /** @type {Job[]} */
  const rows = await api("GET", "/api/v1/jobs");
  jobs.clear();
  for (const job of rows) jobs.set(job.id, job);
  await loadMachines();
  if (open) await loadOne(open);
}

/** @param {string} id */
async function loadOne(id) {
  /** @type {Job} */
  const job = await api("GET", `/api/v1/jobs/${encodeURIComponent(id)}`);
  keep(job);
}

/**
 * Take a newer copy of a job without going back in time: a fetch that left before a
 * PC's result was stored may arrive after the live feed told it. A result that is
 * final stays final.
 * @param {Job} job
 */
function keep(job) {
  const old = jobs.get(job.id);
  if (old && old.results) {
    const known = new Map(old.results.map((r) => [r.agent_id, r]));
    if (!job.results) job.results = old.results;
    job.results = job.results.map((r) => {
      const before = known.get(r.agent_id);
      return r.state === "pending" && before && before.state !== "pending" ? before : r;
    });
    if (job.state === "running" && !job.results.some((r) => r.state === "pending")) job.state = over(job.results);
  }
  jobs.set(job.id, job);
}

/**
 * A job nothing is pending for: cancelled if an admin cancelled it (some PC's result
 * says so), else done; the broker's rule (model/jobs.py state_of).
 * @param {JobResult[]} results
 */
function over(results) {
  return results.some((r) => r.state === "cancelled") ? "cancelled" : "done";
}

/**
 * The live feed: a job changed (made, approved, expired) or one PC's result arrived.
 * @param {import("../lib/events.js").FeedEvent} event
 */
export function jobEvent(event) {
  if (event.type === "job" && event.job && typeof event.job.id === "string") {
    keep(event.job);
  } else if (event.type === "job_result" && typeof event.job_id === "string") {
    const job = jobs.get(event.job_id);
    if (job && job.results) {
      job.results = job.results.map((r) => (r.agent_id === event.result.agent_id ? { ...r, ...event.result } : r));
      const waiting = job.results.some((r) => r.state === "pending");
      // a PC that had it before the cancel answers late: its result replaces "cancelled"
      if (!waiting) job.state = over(job.results);
      else if (job.state !== "cancelled") job.state = "running";
    } else {
      loadOne(event.job_id).then(renderJobs).catch(() => {});
    }
  }
}

export function renderJobs() {
  renderTargets();
  const all = [...jobs.values()].sort((a, b) => b.created - a.created);
  $("jobs-rows").replaceChildren(...all.map(row));
  showEmpty("jobs-empty", all.length === 0);
  const job = open ? jobs.get(open) : null;
  $("job-results").hidden = !job;
  if (job) renderResults(job);
}

function renderTargets() {
  const groups = new Set();
  for (const agent of state.agents.values()) for (const name of agent.groups || []) groups.add(name);
  const select = $("job-group", HTMLSelectElement);
  const chosen = select.value;
  select.replaceChildren(el("option", { text: "— machines below —", attrs: { value: "" } }),
    ...[...groups].sort().map((name) => el("option", { text: name, attrs: { value: name } })));
  select.value = groups.has(chosen) ? chosen : "";
  const boxes = $("job-machines");
  const ticked = new Set([...boxes.querySelectorAll("input:checked")].map((box) => box instanceof HTMLInputElement ? box.value : ""));
  boxes.replaceChildren(...[...state.agents.values()]
    .sort((a, b) => String(a.hostname).localeCompare(String(b.hostname)))
    .map((agent) => el("label", { cls: "check" }, [
      el("input", { attrs: { type: "checkbox", value: agent.id, checked: ticked.has(agent.id) } }),
      ` ${agent.hostname}${agent.online ? "" : " (offline)"}`,
    ])));
}

/** @param {Job} job */
function row(job) {
  const counts = Object.entries(job.counts || {}).map(([name, n]) => `${n} ${name.replace("_", " ")}`).join(", ");
  return el("tr", { attrs: { "data-job": job.id } }, [
    el("td", {}, [badge(job.state.replace("_", " "), TONES[job.state])]),
    el("td", { text: what(job) }),
    el("td", { text: job.reason }),
    el("td", { text: counts || `${job.targets.length} PC${job.targets.length === 1 ? "" : "s"}` }),
    el("td", { cls: "mono small", text: job.created_by }),
    timeCell(job.created),
    el("td", { cls: "actions" }, [
      button("Results", () => show(job.id), "small"),
      job.state === "awaiting_approval" && state.me && job.created_by !== state.me.username
        ? button("Approve", () => approve(job), "small") : null,
      ["awaiting_approval", "running"].includes(job.state) ? button("Cancel", () => cancel(job), "small") : null,
    ]),
  ]);
}

/** @param {Job} job */
function what(job) {
  if (job.action === "script") return "Script";
  return [job.install.length ? `install ${job.install.join(", ")}` : "",
    job.remove.length ? `remove ${job.remove.join(", ")}` : ""].filter(Boolean).join("; ");
}

/** @param {Job} job */
function renderResults(job) {
  $("job-results-title").textContent = `${what(job)} — ${job.reason}`;
  $("job-script").hidden = job.action !== "script";
  $("job-script-text").textContent = job.script || "";
  const results = job.results || [];
  $("job-results-rows").replaceChildren(...results.map((result) => el("tr", { attrs: { "data-result": result.agent_id } }, [
    el("td", {}, [
      el("div", { cls: "host", text: result.hostname || state.agents.get(result.agent_id)?.hostname || "" }),
      el("div", { cls: "sub mono", text: result.agent_id }),
    ]),
    el("td", {}, [badge(result.state.replace("_", " "), TONES[result.state])]),
    el("td", { cls: "mono", text: result.exit_code ?? "—" }),
    timeCell(result.finished),
    el("td", {}, [el("pre", { cls: "output", text: result.output || "" })]),
  ])));
}

/** @param {string} id */
async function show(id) {
  open = id;
  try {
    await loadOne(id);
  } catch (error) {
    toast(errorMessage(error), "error");
  }
  renderJobs();
  $("job-results").scrollIntoView({ block: "nearest" });
}

/** @param {Job} job */
async function approve(job) {
  try {
    await api("POST", `/api/v1/jobs/${encodeURIComponent(job.id)}/approve`);
    await loadOne(job.id);
    renderJobs();
  } catch (error) {
    toast(errorMessage(error), "error");
  }
}

/** @param {Job} job */
async function cancel(job) {
  const sure = await confirmAction("Cancel this job?",
    "PCs that have not got it will not run it. A PC running it now finishes, and its result is kept.",
    "Cancel the job");
  if (!sure) return;
  try {
    await api("POST", `/api/v1/jobs/${encodeURIComponent(job.id)}/cancel`);
    await loadOne(job.id);
    renderJobs();
  } catch (error) {
    toast(errorMessage(error), "error");
  }
}

function showAction() {
  const script = $("job-form", HTMLFormElement).querySelector('input[name="job-action"]:checked');
  const isScript = script instanceof HTMLInputElement && script.value === "script";
  $("job-script-field").hidden = !isScript;
  $("job-packages-fields").hidden = isScript;
}

/** @param {string} text */
function names(text) {
  return text.split(/[\s,]+/).filter(Boolean);
}

/** @param {SubmitEvent} event */
async function create(event) {
  event.preventDefault();
  const form = $("job-form", HTMLFormElement);
  $("job-error").textContent = "";
  const group = field(form, "group").value;
  const machines = [...$("job-machines").querySelectorAll("input:checked")]
    .map((box) => (box instanceof HTMLInputElement ? box.value : ""));
  const checked = form.querySelector('input[name="job-action"]:checked');
  const action = checked instanceof HTMLInputElement ? checked.value : "script";
  /** @type {Record<string, unknown>} */
  const body = {
    targets: group ? { group } : machines,
    action,
    reason: field(form, "reason").value,
    expires_in: Number(field(form, "expires_in").value),
  };
  if (action === "script") body.script = field(form, "script").value;
  else {
    body.install = names(field(form, "install").value);
    body.remove = names(field(form, "remove").value);
  }
  try {
    /** @type {Job} */
    const job = await api("POST", "/api/v1/jobs", body);
    keep(job);
    form.reset();
    showAction();
    await show(job.id);
  } catch (error) {
    $("job-error").textContent = errorMessage(error);
  }
}
