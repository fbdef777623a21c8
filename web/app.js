// The technician console: one page, views behind #hash routes, one live feed.
// Everything an agent reports is hostile text: it only reaches the page through
// textContent (see js/dom.js), never as markup. No inline script or style: the
// broker's CSP (script-src 'self'; style-src 'self') would refuse them anyway.
"use strict";

import { api, setCsrf } from "./js/api.js";
import { loadAccount, setupAccount } from "./js/account.js";
import { loadAudit, renderAudit, setupAudit } from "./js/audit.js";
import { $, toast } from "./js/dom.js";
import { helpChanged, loadHelp, renderHelp, updateHelpCount } from "./js/help.js";
import { LiveFeed } from "./js/live.js";
import { setupLogin, showLogin } from "./js/login.js";
import { agentChanged, loadMachines, renderMachines, setupMachines } from "./js/machines.js";
import { closeRequest, setupRequest } from "./js/request.js";
import { loadSessions, renderSessions, sessionChanged } from "./js/sessions.js";
import { isAdmin, state } from "./js/state.js";
import { loadTokens, renderTokens, setupTokens } from "./js/tokens.js";
import { loadUsers, renderUsers, setupUsers } from "./js/users.js";

const VIEWS = {
  machines: { load: loadMachines, render: renderMachines },
  help: { load: () => Promise.all([loadMachines(), loadHelp()]), render: renderHelp },
  sessions: { load: loadSessions, render: renderSessions },
  audit: { admin: true, load: loadAudit, render: renderAudit },
  users: { admin: true, load: loadUsers, render: renderUsers },
  tokens: { admin: true, load: loadTokens, render: renderTokens },
  account: { load: loadAccount, render: () => {} },
};
const SECTIONS = ["login", ...Object.keys(VIEWS)];
const LIVE_TEXT = { live: "Live", resumed: "Live", reconnecting: "Reconnecting…", off: "Offline" };

const feed = new LiveFeed({ onEvent, onState: liveState, stillLoggedIn });

function show(section) {
  for (const name of SECTIONS) $(`view-${name}`).hidden = name !== section;
  $("bar").hidden = section === "login";
  for (const link of document.querySelectorAll(".nav a")) {
    if (link.dataset.view === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

function wanted() {
  const name = location.hash.replace(/^#/, "") || "machines";
  if (!(name in VIEWS)) return "machines";
  if (state.me.must_enrol_totp) return "account";
  if (VIEWS[name].admin && !isAdmin()) return "machines";
  return name;
}

async function route(focus = false) {
  if (!state.me) return;
  const name = wanted();
  state.view = name;
  show(name);
  document.title = `${$(`view-${name}`).querySelector("h1").textContent} · allowhelp`;
  if (focus) $("main").focus();
  try {
    await VIEWS[name].load();
  } catch (error) {
    if (error.status === 401) return leave("Your session ended. Sign in again.");
    if (error.status !== 404) toast(error.message, "error");
  }
  if (state.view === name) VIEWS[name].render();
}

async function enter() {
  const me = await api("GET", "/api/v1/me");
  state.me = me;
  setCsrf(me.csrf_token);
  $("who").textContent = `${me.full_name} · ${me.role}`;
  for (const link of document.querySelectorAll(".nav a[data-admin]")) link.hidden = me.role !== "admin";
  document.body.classList.toggle("is-admin", me.role === "admin");
  $("nav-sessions").textContent = me.role === "admin" ? "Sessions" : "My sessions";
  for (const link of document.querySelectorAll(".nav a")) {
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

async function stillLoggedIn() {
  try {
    await api("GET", "/api/v1/me");
    return true;
  } catch (error) {
    if (error.status === 401 || error.status === 403) {
      leave("Your session ended. Sign in again.");
      return false;
    }
    return true; // the broker is unreachable: keep trying
  }
}

function liveState(which) {
  $("live").dataset.state = which === "resumed" ? "live" : which;
  $("live-text").textContent = LIVE_TEXT[which] || which;
  if (which === "resumed") {
    // Catch up with what happened while the feed was down.
    Promise.all([loadMachines(), loadHelp(), loadSessions()])
      .then(() => rerender(state.view))
      .catch(() => {});
  }
}

function rerender(...views) {
  if (views.includes(state.view)) VIEWS[state.view].render();
}

function onEvent(event) {
  if (event.type === "agent") {
    agentChanged(event.agent);
    rerender("machines", "help");
  } else if (event.type === "session") {
    const before = sessionChanged(event.session);
    rerender("sessions");
    announce(event.session, before);
  } else if (event.type === "help_request") {
    const ticket = event.help_request || event;
    helpChanged(ticket);
    updateHelpCount();
    rerender("help");
    if (ticket.hostname && !ticket.session_id) toast(`New help request from ${ticket.hostname}.`);
  }
}

function announce(session, before) {
  if (!session || !state.me || session.technician !== state.me.username || before === session.state) return;
  const host = session.hostname || session.agent_id;
  const text = {
    active: `${host}: the user allowed your request.`,
    denied: `${host}: the user declined your request.`,
    expired: `${host}: no answer, the request expired.`,
  }[session.state];
  if (text) toast(text, session.state === "active" ? "ok" : "info");
}

async function logout() {
  await api("POST", "/api/v1/logout").catch(() => {});
  leave();
}

async function start() {
  setupLogin(enter);
  setupMachines();
  setupRequest(() => rerender("sessions"));
  setupAudit();
  setupUsers();
  setupTokens();
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
