// @ts-check
// Chat and notes on a session page: the transcript (GET, then live from the
// events socket), sending a message, and the technician's notes for the ticket
// (PATCH). Every text is the PC's or a person's words: shown with textContent only.

import { api, errorMessage } from "./api.js";
import { $, plain } from "./dom.js";
import { locale, t } from "./i18n.js";
import { sessionPath } from "./session-page.js";

/** @typedef {{from: string, text: string, ts: number}} ChatLine */

/** @param {string} from "technician:NAME" or "user@AGENT" */
function who(from) {
  if (from.startsWith("technician:")) return plain(from.slice(11), 100);
  return t("extras.user_at_pc");
}

/** @param {ChatLine} line */
function appendLine(line) {
  const list = $("chat-lines");
  const item = document.createElement("li");
  const name = document.createElement("span");
  name.className = "who";
  name.textContent = `${new Date(line.ts * 1000).toLocaleTimeString(locale)} ${who(String(line.from))}:`;
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = plain(String(line.text), 2000);
  item.append(name, text);
  list.append(item);
  list.scrollTop = list.scrollHeight;
}

let loaded = false;

/** Load the transcript once the session is active (and again after the feed reconnects). */
export async function loadChat() {
  try {
    /** @type {ChatLine[]} */
    const lines = await api("GET", `${sessionPath}/messages`);
    $("chat-lines").replaceChildren();
    lines.forEach(appendLine);
    loaded = true;
  } catch (error) {
    $("chat-error").textContent = errorMessage(error);
  }
}

/** @param {import("./events.js").FeedEvent} event a "chat" event of this session */
export function chatEvent(event) {
  if (event.type === "chat" && loaded && event.message) appendLine(event.message);
}

/** @param {import("./session-states.js").Session} session */
export function showNotes(session) {
  const notes = $("notes", HTMLTextAreaElement);
  if (document.activeElement !== notes && !notes.dataset.dirty) notes.value = session.notes || "";
  if (session.ticket) $("ticket").textContent = t("extras.ticket", { ticket: plain(session.ticket, 100) });
}

export function wireChatAndNotes() {
  $("chat-form", HTMLFormElement).addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("chat-text", HTMLInputElement);
    const text = input.value.trim();
    if (!text) return;
    $("chat-error").textContent = "";
    try {
      await api("POST", `${sessionPath}/messages`, { text });
      input.value = "";
    } catch (error) {
      $("chat-error").textContent = errorMessage(error);
    }
  });
  const notes = $("notes", HTMLTextAreaElement);
  notes.addEventListener("input", () => { notes.dataset.dirty = "1"; });
  $("notes-save").addEventListener("click", async () => {
    $("notes-status").textContent = t("extras.saving");
    try {
      await api("PATCH", sessionPath, { notes: notes.value });
      delete notes.dataset.dirty;
      $("notes-status").textContent = t("extras.saved");
    } catch (error) {
      $("notes-status").textContent = errorMessage(error);
    }
  });
}

/**
 * The session is active: show the chat and notes (loaded once) on a shell or screen page.
 * @param {import("./session-states.js").Session} session
 */
export function showExtras(session) {
  $("side").hidden = false;
  showNotes(session);
  if (!loaded) loadChat();
}

/** Opening or closing the panel changes the room the terminal or screen has. */
export function refitOnToggle() {
  $("side").addEventListener("toggle", () => window.dispatchEvent(new Event("resize")));
}
