// The console. Everything an agent reports is hostile text: it only ever
// reaches the page through textContent, never innerHTML.
"use strict";

const state = { csrf: sessionStorage.getItem("csrf") || "", agents: [] };

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET") headers["X-CSRF-Token"] = state.csrf;
  const response = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(data.message || `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

function show(view) {
  for (const id of ["login-view", "machines-view"]) {
    document.getElementById(id).hidden = id !== view;
  }
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : "never";
}

function renderMachines() {
  const filter = document.getElementById("filter").value.trim().toLowerCase();
  const body = document.getElementById("machines");
  body.replaceChildren();
  const rows = state.agents.filter((a) =>
    !filter || [a.hostname, a.user, a.os].some((v) => String(v).toLowerCase().includes(filter)));
  for (const agent of rows) {
    const tr = document.createElement("tr");
    tr.append(
      cell(agent.online ? "online" : "offline", agent.online ? "online" : "offline"),
      cell(agent.hostname), cell(agent.user), cell(agent.os),
      cell(agent.online ? "now" : when(agent.last_seen)),
    );
    body.append(tr);
  }
  document.getElementById("machines-empty").hidden = state.agents.length > 0;
}

async function loadMachines() {
  state.agents = await api("GET", "/api/v1/agents");
  renderMachines();
}

async function enter(user) {
  const who = document.getElementById("who");
  who.textContent = `${user.full_name} (${user.role})`;
  who.hidden = false;
  document.getElementById("logout").hidden = false;
  show("machines-view");
  await loadMachines();
}

async function start() {
  document.getElementById("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    const error = document.getElementById("login-error");
    error.textContent = "";
    try {
      const answer = await api("POST", "/api/v1/login",
        { username: form.get("username"), password: form.get("password") });
      state.csrf = answer.csrf_token;
      sessionStorage.setItem("csrf", state.csrf);
      await enter(answer.user);
    } catch (e) {
      error.textContent = e.message;
    }
  });
  document.getElementById("logout").addEventListener("click", async () => {
    await api("POST", "/api/v1/logout").catch(() => {});
    sessionStorage.removeItem("csrf");
    location.reload();
  });
  document.getElementById("filter").addEventListener("input", renderMachines);
  try {
    await enter(await api("GET", "/api/v1/me"));
  } catch (e) {
    show("login-view");
  }
}

start();
