// @ts-check
// The technician console: one page, views behind #hash routes, one live feed.
// Everything an agent reports is hostile text: it only reaches the page through
// textContent (see lib/dom.js), never as markup. No inline script or style: the
// broker's CSP (script-src 'self'; style-src 'self') would refuse them anyway.

import { ApiError, api, errorMessage, setCsrf } from "../lib/api.js";
import { $, toast } from "../lib/dom.js";
import { EventFeed } from "../lib/events.js";
import { languagePicker, t, translatePage } from "../lib/i18n.js";
import { stateWords } from "../lib/session-states.js";
import { loadAccount, setupAccount } from "../console/account.js";
import { loadAudit, renderAudit, setupAudit } from "../console/audit.js";
import { helpChanged, loadHelp, renderHelp, updateHelpCount } from "../console/help.js";
import { jobEvent, loadJobs, renderJobs, setupJobs } from "../console/jobs.js";
import { setupLogin, showLogin } from "../console/login.js";
import { agentChanged, loadMachines, renderMachines, setupMachines } from "../console/machines.js";
import { closeRequest, setupRequest } from "../console/request.js";
import { loadSessions, renderSessions, sessionChanged } from "../console/sessions.js";
import { isAdmin, state } from "../console/state.js";
import { loadTokens, renderTokens, setupTokens } from "../console/tokens.js";
import { loadUsers, renderUsers, setupUsers } from "../console/users.js";

/** @typedef {{admin?: boolean, load: () => Promise<unknown>, render: () => void}} View */
/** @type {Record<string, View>} */
const VIEWS = {
  machines: { load: loadMachines, render: renderMachines },
  help: { load: () => Promise.all([loadMachines(), loadHelp()]), render: renderHelp },
  sessions: { load: loadSessions, render: renderSessions },
  audit: { admin: true, load: loadAudit, render: renderAudit },
  users: { admin: true, load: loadUsers, render: renderUsers },
  tokens: { admin: true, load: loadTokens, render: renderTokens },
  jobs: { admin: true, load: loadJobs, render: renderJobs },
  account: { load: loadAccount, render: () => {} },
};
const SECTIONS = ["login", ...Object.keys(VIEWS)];
const LIVE_TEXT = { live: "live.live", resumed: "live.live", reconnecting: "live.reconnecting", off: "live.off" };
const SIGNED_OUT = t("console.signed_out");

const feed = new EventFeed({ onEvent, onState: liveState });

/** @param {string} section */
function show(section) {
  for (const name of SECTIONS) $(`view-${name}`).hidden = name !== section;
  $("bar").hidden = section === "login";
  for (const link of links(".nav a")) {
    if (link.dataset.view === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

/** @param {string} selector of links in the bar */
function links(selector) {
  return /** @type {NodeListOf<HTMLAnchorElement>} */ (document.querySelectorAll(selector));
}

/** @param {import("../console/state.js").Me} me */
function wanted(me) {
  const name = location.hash.replace(/^#/, "") || "machines";
  if (!(name in VIEWS)) return "machines";
  if (me.must_enrol_totp) return "account";
  if (VIEWS[name].admin && !isAdmin()) return "machines";
  return name;
}

async function route(focus = false) {
  if (!state.me) return;
  const name = wanted(state.me);
  state.view = name;
  show(name);
  document.title = `${$(`view-${name}`).querySelector("h1")?.textContent} · allowhelp`;
  if (focus) $("main").focus();
  try {
    await VIEWS[name].load();
  } catch (error) {
    const status = error instanceof ApiError ? error.status : 0;
    if (status === 401) return leave(SIGNED_OUT);
    if (status !== 404) toast(errorMessage(error), "error");
  }
  if (state.view === name) VIEWS[name].render();
}

async function enter() {
  /** @type {import("../console/state.js").Me} */
  const me = await api("GET", "/api/v1/me");
  state.me = me;
  setCsrf(me.csrf_token);
  $("who").textContent = `${me.full_name} · ${me.role === "admin" ? t("role.admin") : t("role.technician")}`;
  for (const link of links(".nav a[data-admin]")) link.hidden = me.role !== "admin";
  document.body.classList.toggle("is-admin", me.role === "admin");
  $("nav-sessions").textContent = me.role === "admin" ? t("nav.sessions") : t("nav.my_sessions");
  for (const link of links(".nav a")) {
    link.toggleAttribute("inert", Boolean(me.must_enrol_totp) && link.dataset.view !== "account");
  }
  if (!me.must_enrol_totp) {
    await Promise.all([loadHelp().then(updateHelpCount), loadSessions()]).catch(() => {});
    feed.start();
  }
  await route();
}

function leave(message = "") {
  feed.stop();
  closeRequest();
  state.me = null;
  state.agents.clear();
  state.sessions.clear();
  state.help.clear();
  setCsrf("");
  show("login");
  showLogin(message);
}

/** @param {import("../lib/events.js").FeedState} which */
function liveState(which) {
  if (which === "signed_out") return leave(SIGNED_OUT); // which stops the feed: "off"
  $("live").dataset.state = which === "resumed" ? "live" : which;
  $("live-text").textContent = t(LIVE_TEXT[which]);
  if (which === "resumed") {
    // Catch up with what happened while the feed was down.
    Promise.all([loadMachines(), loadHelp(), loadSessions()])
      .then(() => rerender(state.view))
      .catch(() => {});
  }
}

/** @param {...string} views */
function rerender(...views) {
  if (views.includes(state.view)) VIEWS[state.view].render();
}

/** @param {import("../lib/events.js").FeedEvent} event */
function onEvent(event) {
  if (event.type === "agent") {
    agentChanged(event.agent);
    rerender("machines", "help");
  } else if (event.type === "session") {
    const before = sessionChanged(event.session);
    rerender("sessions");
    announce(event.session, before);
  } else if (event.type === "job" || event.type === "job_result") {
    jobEvent(event);
    rerender("jobs");
  } else if (event.type === "help_request") {
    const ticket = event.help_request || event;
    helpChanged(ticket);
    updateHelpCount();
    rerender("help");
    if (ticket.hostname && !ticket.session_id) toast(t("console.new_help", { host: ticket.hostname }));
  }
}

/**
 * Tell the technician who asked how the person at the PC answered.
 * @param {import("../lib/session-states.js").Session | null | undefined} session
 * @param {string | null} before
 */
function announce(session, before) {
  if (!session || !state.me || session.technician !== state.me.username || before === session.state) return;
  const { news } = stateWords(session.state);
  if (news) toast(`${session.hostname || session.agent_id}: ${news}`, session.state === "active" ? "ok" : "info");
}

async function logout() {
  await api("POST", "/api/v1/logout").catch(() => {});
  leave();
}

async function start() {
  translatePage();
  languagePicker($("language", HTMLSelectElement));
  languagePicker($("login-language", HTMLSelectElement));
  setupLogin(enter);
  setupMachines();
  setupRequest(() => rerender("sessions"));
  setupAudit();
  setupUsers();
  setupTokens();
  setupJobs();
  setupAccount(() => enter());
  $("logout").addEventListener("click", logout);
  window.addEventListener("hashchange", () => route(true));
  try {
    await enter();
  } catch {
    leave();
  }
}

start();
