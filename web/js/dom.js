// Building the page. Everything shown comes from the network and may be hostile
// (agents report their own host name, user and OS): it only ever reaches the page
// as text nodes or textContent, never parsed as markup.
"use strict";

export function $(id) {
  return document.getElementById(id);
}

export function el(tag, options = {}, children = []) {
  const node = document.createElement(tag);
  const { cls, text, attrs, on, title } = options;
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (title) node.title = String(title);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (/^on/i.test(name) || name === "style" || name === "srcdoc") {
      throw new Error(`refusing to set attribute ${name}`);
    }
    if (value === false || value === null || value === undefined) continue;
    node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const [event, handler] of Object.entries(on || {})) node.addEventListener(event, handler);
  for (const child of [].concat(children)) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

export function button(label, onClick, cls = "", attrs = {}) {
  return el("button", { cls, text: label, attrs: { type: "button", ...attrs }, on: { click: onClick } });
}

const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
const absolute = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

export function fullTime(seconds) {
  return seconds ? absolute.format(new Date(seconds * 1000)) : "";
}

export function ago(seconds) {
  if (!seconds) return "never";
  const delta = seconds - Date.now() / 1000;
  const size = Math.abs(delta);
  if (size < 45) return delta < 0 ? "just now" : "in a moment";
  if (size < 3600) return relative.format(Math.round(delta / 60), "minute");
  if (size < 86400) return relative.format(Math.round(delta / 3600), "hour");
  if (size < 86400 * 30) return relative.format(Math.round(delta / 86400), "day");
  return fullTime(seconds);
}

export function timeCell(seconds, fallback = "—") {
  return el("td", { text: seconds ? ago(seconds) : fallback, title: fullTime(seconds), cls: "nowrap" });
}

export function badge(text, kind) {
  return el("span", { cls: `badge ${kind || ""}`, text });
}

export function toast(message, kind = "info") {
  const box = $("toasts");
  const item = el("div", { cls: `toast ${kind}`, attrs: { role: kind === "error" ? "alert" : "status" } }, [
    el("span", { text: message }),
    button("Dismiss", () => item.remove(), "ghost small", { "aria-label": "Dismiss" }),
  ]);
  box.append(item);
  setTimeout(() => item.remove(), 8000);
  while (box.children.length > 4) box.firstElementChild.remove();
}

export function confirmAction(title, text, okLabel = "Confirm") {
  const dialog = $("confirm-dialog");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = okLabel;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

export function showEmpty(id, empty, text) {
  const node = $(id);
  node.hidden = !empty;
  if (text !== undefined) node.textContent = text;
}
