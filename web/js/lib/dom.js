// @ts-check
// Building the page. Everything shown comes from the network and may be hostile
// (agents report their own host name, user and OS; a PC names its desktop): it
// only ever reaches the page as text nodes or textContent, never parsed as markup.

import { locale, t } from "./i18n.js";

/**
 * The element with this id. `type` checks what it is (and tells the type checker).
 * @template {HTMLElement} [T=HTMLElement]
 * @param {string} id
 * @param {new () => T} [type]
 * @returns {T}
 */
export function $(id, type) {
  const node = document.getElementById(id);
  if (!(node instanceof (type || HTMLElement))) throw new Error(`the page has no #${id} of the expected kind`);
  return /** @type {T} */ (node);
}

/**
 * A form's input, textarea or select by its name.
 * @param {HTMLFormElement} form
 * @param {string} name
 */
export function field(form, name) {
  const control = form.elements.namedItem(name);
  if (control instanceof HTMLInputElement || control instanceof HTMLTextAreaElement
    || control instanceof HTMLSelectElement) return control;
  throw new Error(`the form has no field ${name}`);
}

/** Hostile text made plain: no control or bidi characters, bounded.
 * @param {unknown} text
 * @param {number} limit
 */
export function plain(text, limit) {
  return String(text ?? "").replace(/\p{C}/gu, "").trim().slice(0, limit);
}

/**
 * @typedef {object} ElOptions
 * @property {string} [cls]
 * @property {string | number | null} [text]
 * @property {string} [title]
 * @property {Record<string, string | number | boolean | null | undefined>} [attrs]
 * @property {Record<string, EventListener>} [on]
 */
/** @typedef {Node | string | null | undefined | false} Child */

/**
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {ElOptions} [options]
 * @param {Child | Child[]} [children]
 * @returns {HTMLElementTagNameMap[K]}
 */
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
  for (const child of Array.isArray(children) ? children : [children]) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

/**
 * @param {string} label
 * @param {EventListener} onClick
 * @param {string} [cls]
 * @param {ElOptions["attrs"]} [attrs]
 */
export function button(label, onClick, cls = "", attrs = {}) {
  return el("button", { cls, text: label, attrs: { type: "button", ...attrs }, on: { click: onClick } });
}

// Dates and times in the console's language, as the browser's locale writes them.
const relative = new Intl.RelativeTimeFormat(locale, { numeric: "auto" });
const absolute = new Intl.DateTimeFormat(locale, { dateStyle: "medium", timeStyle: "short" });

/** @param {number | null | undefined} seconds */
export function fullTime(seconds) {
  return seconds ? absolute.format(new Date(seconds * 1000)) : "";
}

/** @param {number | null | undefined} seconds */
export function ago(seconds) {
  if (!seconds) return t("time.never");
  const delta = seconds - Date.now() / 1000;
  const size = Math.abs(delta);
  if (size < 45) return delta < 0 ? t("time.just_now") : t("time.in_a_moment");
  if (size < 3600) return relative.format(Math.round(delta / 60), "minute");
  if (size < 86400) return relative.format(Math.round(delta / 3600), "hour");
  if (size < 86400 * 30) return relative.format(Math.round(delta / 86400), "day");
  return fullTime(seconds);
}

/**
 * @param {number | null | undefined} seconds
 * @param {string} [fallback]
 */
export function timeCell(seconds, fallback = "—") {
  return el("td", { text: seconds ? ago(seconds) : fallback, title: fullTime(seconds), cls: "nowrap" });
}

/**
 * @param {string} text
 * @param {string} [kind]
 */
export function badge(text, kind) {
  return el("span", { cls: `badge ${kind || ""}`, text });
}

/**
 * @param {string} message
 * @param {"info" | "ok" | "error"} [kind]
 */
export function toast(message, kind = "info") {
  const box = $("toasts");
  const item = el("div", { cls: `toast ${kind}`, attrs: { role: kind === "error" ? "alert" : "status" } }, [
    el("span", { text: message }),
    button("Dismiss", () => item.remove(), "ghost small", { "aria-label": "Dismiss" }),
  ]);
  box.append(item);
  setTimeout(() => item.remove(), 8000);
  while (box.children.length > 4) box.firstElementChild?.remove();
}

/**
 * @param {string} title
 * @param {string} text
 * @param {string} [okLabel]
 * @returns {Promise<boolean>}
 */
export function confirmAction(title, text, okLabel = "Confirm") {
  const dialog = $("confirm-dialog", HTMLDialogElement);
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = okLabel;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

/**
 * @param {string} id
 * @param {boolean} empty
 * @param {string} [text]
 */
export function showEmpty(id, empty, text) {
  const node = $(id);
  node.hidden = !empty;
  if (text !== undefined) node.textContent = text;
}
