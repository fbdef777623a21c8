// @ts-check
// Admins replay a recorded shell. The broker serves the recording only while
// it still matches the SHA-256 kept in the audit log; a mismatch is shown.
// The player is the asciinema bundle, loaded by the page before this module.
import { api, apiText, errorMessage } from "../lib/api.js";
import { $, fullTime } from "../lib/dom.js";
import { t, translatePage } from "../lib/i18n.js";
import { sessionPath } from "../lib/session-page.js";

async function replay() {
  translatePage();
  /** @type {import("../lib/session-states.js").Session} */
  const session = await api("GET", sessionPath);
  $("host").textContent = `${session.hostname} — ${session.technician}`;
  $("state").textContent = t("replay.recorded", { time: fullTime(session.created) });
  const text = await apiText(`${sessionPath}/recording`);
  $("message").textContent = t("replay.verified");
  window.AsciinemaPlayer.create({ data: text }, $("player"), { fit: "both", autoPlay: true, idleTimeLimit: 1 });
}

replay().catch((error) => {
  $("message").textContent = t("replay.failed", { error: errorMessage(error) });
});
