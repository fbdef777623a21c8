// Admins replay a recorded shell. The broker serves the recording only while
// it still matches the SHA-256 kept in the audit log; a mismatch is shown.
"use strict";

(async () => {
  const sessionId = new URLSearchParams(location.search).get("session") || "";
  const message = document.getElementById("message");
  const path = `/api/v1/sessions/${encodeURIComponent(sessionId)}`;
  try {
    const info = await fetch(path, { credentials: "same-origin" });
    const session = await info.json();
    if (!info.ok) throw new Error(session.message || `HTTP ${info.status}`);
    document.getElementById("host").textContent = `${session.hostname} — ${session.technician}`;
    document.getElementById("state").textContent =
      `recorded ${new Date(session.created * 1000).toLocaleString()}`;
    const cast = await fetch(`${path}/recording`, { credentials: "same-origin" });
    if (!cast.ok) {
      const body = await cast.json().catch(() => ({}));
      throw new Error(body.message || `HTTP ${cast.status}`);
    }
    const text = await cast.text();
    message.textContent = "Recording verified against the audit log.";
    window.AsciinemaPlayer.create({ data: text }, document.getElementById("player"),
      { fit: "both", autoPlay: true, idleTimeLimit: 1 });
  } catch (error) {
    message.textContent = `Cannot replay this session: ${error.message}`;
  }
})();
