// @ts-check
// The files page: once the user allowed it, the PC's folders (as the signed-in
// user sees them), downloads and uploads with their progress, and the chat and
// notes. Names come from the PC: shown with textContent, sent back as data.

import { ApiError, apiStream, csrfToken, errorMessage } from "../lib/api.js";
import { $, fullTime, plain } from "../lib/dom.js";
import { locale, t } from "../lib/i18n.js";
import { runSessionPage, sessionPath } from "../lib/session-page.js";
import { chatEvent, loadChat, showNotes, wireChatAndNotes } from "../lib/session-extras.js";

/** @typedef {{name: string, type: string, size: number | null, mtime: number | null, name_not_utf8?: boolean}} Entry */

let shown = false;

/** @param {string} folder @param {string} name */
function join(folder, name) {
  if (folder === "." || folder === "") return name;
  return folder.endsWith("/") ? folder + name : `${folder}/${name}`;
}

/** @param {string} folder */
function parent(folder) {
  const trimmed = folder.replace(/\/+$/, "");
  const cut = trimmed.lastIndexOf("/");
  if (cut > 0) return trimmed.slice(0, cut);
  if (cut === 0) return "/";
  return ".";
}

const oneDecimal = new Intl.NumberFormat(locale, { minimumFractionDigits: 1, maximumFractionDigits: 1 });
const twoDecimals = new Intl.NumberFormat(locale, { minimumFractionDigits: 2, maximumFractionDigits: 2 });

/** @param {number} bytes a size, as the console's language writes numbers and units */
function size(bytes) {
  if (bytes < 1024) return t("files.size_b", { n: bytes.toLocaleString(locale) });
  if (bytes < 1024 * 1024) return t("files.size_kib", { n: oneDecimal.format(bytes / 1024) });
  if (bytes < 1024 ** 3) return t("files.size_mib", { n: oneDecimal.format(bytes / 1024 / 1024) });
  return t("files.size_gib", { n: twoDecimals.format(bytes / 1024 ** 3) });
}

/** @param {string} what @param {number} done @param {number} total */
function progress(what, done, total) {
  const bar = $("transfer-progress", HTMLProgressElement);
  bar.hidden = false;
  bar.max = Math.max(total, 1);
  bar.value = done;
  const percent = total ? Math.floor((done * 100) / total) : 100;
  $("transfer-status").textContent = t("files.progress", { what, done: size(done), total: size(total), percent });
}

/** @param {string} text */
function transferDone(text) {
  $("transfer-status").textContent = text;
  $("transfer-progress", HTMLProgressElement).hidden = true;
}

/**
 * A folder's entries, or why not. A listing is whole or fails: the broker answers
 * listing_cut when the PC's answer broke mid-way, and a long folder's answer that
 * breaks after it started ends without its "]" (the body is then no JSON).
 * @param {string} folder
 * @returns {Promise<Entry[]>}
 */
async function entriesOf(folder) {
  const response = await apiStream(`${sessionPath}/files?path=${encodeURIComponent(folder)}`);
  const entries = await response.json().catch(() => null);
  if (!Array.isArray(entries)) throw new ApiError(response.status, "listing_cut", t("files.connection_broke"));
  return entries;
}

async function list() {
  const folder = $("path", HTMLInputElement).value.trim() || ".";
  $("files-error").textContent = "";
  try {
    const entries = await entriesOf(folder);
    entries.sort((a, b) => (a.type === "dir" ? 0 : 1) - (b.type === "dir" ? 0 : 1) || a.name.localeCompare(b.name));
    $("entries").replaceChildren(...entries.map((entry) => row(folder, entry)));
    $("up", HTMLButtonElement).disabled = folder === "." || folder === "/";
  } catch (error) {
    const cut = error instanceof ApiError && error.code === "listing_cut";
    if (cut) $("entries").replaceChildren(); // never a part of the folder shown as all of it
    $("files-error").textContent = cut ? t("files.listing_incomplete") : errorMessage(error);
    $("files-error").title = cut ? plain(error.message, 300) : "";
  }
}

/** @param {string} folder @param {Entry} entry */
function row(folder, entry) {
  const tr = document.createElement("tr");
  tr.dataset.name = entry.name;
  const name = document.createElement("td");
  const label = plain(entry.name, 300) + (entry.type === "dir" ? "/" : "");
  if (entry.type === "dir" && !entry.name_not_utf8) {
    const open = document.createElement("button");
    open.type = "button";
    open.className = "link";
    open.textContent = label;
    open.addEventListener("click", () => {
      $("path", HTMLInputElement).value = join(folder, entry.name);
      list();
    });
    name.append(open);
  } else {
    name.textContent = label;
  }
  const bytes = document.createElement("td");
  bytes.textContent = entry.type === "file" && entry.size !== null ? size(entry.size) : "";
  const changed = document.createElement("td");
  changed.textContent = fullTime(entry.mtime);
  const action = document.createElement("td");
  if (entry.type === "file" && !entry.name_not_utf8) {
    const get = document.createElement("button");
    get.type = "button";
    get.textContent = t("files.download");
    get.className = "download";
    get.addEventListener("click", () => download(join(folder, entry.name), entry.name));
    action.append(get);
  }
  tr.append(name, bytes, changed, action);
  return tr;
}

/** @param {string} path @param {string} name */
async function download(path, name) {
  try {
    const response = await apiStream(`${sessionPath}/files/content?path=${encodeURIComponent(path)}`);
    const total = Number(response.headers.get("content-length") || 0);
    const reader = response.body ? response.body.getReader() : null;
    /** @type {BlobPart[]} */
    const chunks = [];
    let received = 0;
    const what = t("files.downloading", { name: plain(name, 200) });
    progress(what, 0, total);
    while (reader) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(/** @type {Uint8Array<ArrayBuffer>} */ (value));
      received += value.length;
      progress(what, received, total);
    }
    if (received !== total) throw new Error(t("files.cut", { received, total }));
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob(chunks));
    link.download = name;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
    transferDone(t("files.downloaded", { name: plain(name, 200), size: size(received) }));
  } catch (error) {
    transferDone(t("files.download_failed", { error: errorMessage(error) }));
  }
}

async function upload() {
  const input = $("upload-file", HTMLInputElement);
  const file = input.files && input.files[0];
  if (!file) {
    transferDone(t("files.choose"));
    return;
  }
  const folder = $("path", HTMLInputElement).value.trim() || ".";
  const target = join(folder, file.name);
  const token = await csrfToken();
  const request = new XMLHttpRequest();
  request.open("PUT", `${sessionPath}/files/content?path=${encodeURIComponent(target)}`);
  request.setRequestHeader("X-CSRF-Token", token);
  const what = t("files.uploading", { name: plain(file.name, 200) });
  request.upload.addEventListener("progress", (event) => progress(what, event.loaded, file.size));
  const finished = new Promise((resolve) => {
    request.addEventListener("loadend", resolve);
  });
  progress(what, 0, file.size);
  request.send(file);
  await finished;
  if (request.status === 201) {
    const answer = JSON.parse(request.responseText);
    transferDone(t("files.uploaded", {
      name: plain(file.name, 200), size: size(answer.size), hash: String(answer.sha256).slice(0, 12) }));
    input.value = "";
    list();
    return;
  }
  let why = request.status ? t("files.broker_answered", { status: request.status }) : t("files.connection_broke");
  try {
    why = JSON.parse(request.responseText).message || why;
  } catch {
    // not JSON: keep the status
  }
  transferDone(t("files.upload_failed", { error: plain(why, 300) }));
}

runSessionPage({
  kind: "files",
  active(session) {
    showNotes(session);
    if (shown) return;
    shown = true;
    const viewOnly = session.kind === "files" && Boolean(session.view_only); // the broker refuses uploads too
    $("upload-row").hidden = viewOnly;
    $("view-only-note").hidden = !viewOnly;
    $("notice").hidden = true;
    $("files").hidden = false;
    $("side").hidden = false;
    list();
    loadChat();
  },
  over(session) {
    $("files").hidden = true;
    showNotes(session);
  },
  event: chatEvent,
});

$("path-form", HTMLFormElement).addEventListener("submit", (event) => {
  event.preventDefault();
  list();
});
$("up").addEventListener("click", () => {
  $("path", HTMLInputElement).value = parent($("path", HTMLInputElement).value.trim() || ".");
  list();
});
$("upload").addEventListener("click", upload);
wireChatAndNotes();
