// @ts-check
// Admins replay a recorded screen session. The broker serves the recording only
// while it still matches the SHA-256 kept in the audit log (a mismatch is shown,
// and is itself audited). The player is noVNC's decoder fed from the file
// (../replay/screen-player.js), with seek and speed.
import { api, apiStream, errorMessage } from "../lib/api.js";
import { $, fullTime } from "../lib/dom.js";
import { t, translatePage } from "../lib/i18n.js";
import { sessionPath } from "../lib/session-page.js";
import { coloursAsRecorded, parseRecording } from "../replay/recording.js";
import { ScreenPlayer } from "../replay/screen-player.js";

/** @param {number} ms */
function clock(ms) {
  const seconds = Math.floor(ms / 1000);
  return `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")}`;
}

/** @param {ScreenPlayer} player */
function show(player) {
  const seek = $("seek", HTMLInputElement);
  if (document.activeElement !== seek) seek.value = String(Math.round(player.position));
  $("time").textContent = `${clock(player.position)} / ${clock(player.duration)}`;
  $("play").textContent = player.playing ? t("replay.pause") : t("replay.play");
  document.body.dataset.replay = player.playing ? "playing" : player.ended ? "ended" : "paused";
  document.body.dataset.position = String(Math.round(player.position));
}

async function replay() {
  translatePage();
  /** @type {import("../lib/session-states.js").Session} */
  const session = await api("GET", sessionPath);
  if (session.kind !== "screen") {
    location.replace(`/replay.html${location.search}`); // a shell: the asciicast player
    return;
  }
  const response = await apiStream(`${sessionPath}/recording`);
  if (response.headers.get("X-Recording-Format") !== "allowhelp-rfb-1") {
    throw new Error("the broker did not send a screen recording");
  }
  const recording = parseRecording(await response.arrayBuffer());
  const meta = recording.meta;
  $("host").textContent = `${String(meta.hostname ?? "")} — ${String(meta.technician ?? "")}`;
  const started = typeof meta.started === "number" ? fullTime(meta.started) : "";
  $("state").textContent = t("replay.recorded", { time: started });
  $("message").textContent = coloursAsRecorded(recording)
    ? t("replay.verified")
    : `${t("replay.verified")} ${t("replay.other_colours")}`;
  const player = new ScreenPlayer($("screen"), recording);
  const seek = $("seek", HTMLInputElement);
  seek.max = String(recording.duration);
  document.body.dataset.duration = String(recording.duration);
  $("controls").hidden = false;
  player.addEventListener("change", () => show(player));
  $("play").addEventListener("click", () => {
    if (player.playing) player.pause();
    else if (player.ended) player.seek(0).then(() => player.play());
    else player.play();
  });
  seek.addEventListener("change", () => {
    player.seek(Number(seek.value)).then(() => seek.blur());
  });
  const speed = $("speed", HTMLSelectElement);
  speed.addEventListener("change", () => player.setSpeed(Number(speed.value)));
  player.play();
  show(player);
}

replay().catch((error) => {
  document.body.dataset.replay = "failed";
  $("message").textContent = t("replay.failed", { error: errorMessage(error) });
});
