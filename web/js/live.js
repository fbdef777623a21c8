// The one live feed: a WebSocket to /api/v1/events. Nothing in the page polls;
// after a lost connection it reconnects with a growing, jittered delay and the
// app reloads its lists once, to catch what it missed.
"use strict";

export class LiveFeed {
  constructor({ onEvent, onState, stillLoggedIn }) {
    this.onEvent = onEvent;
    this.onState = onState;
    this.stillLoggedIn = stillLoggedIn;
    this.socket = null;
    this.timer = 0;
    this.attempt = 0;
    this.stopped = true;
  }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.socket) this.socket.close(1000);
    this.socket = null;
    this.onState("off");
  }

  connect() {
    const socket = new WebSocket(`wss://${location.host}/api/v1/events`);
    this.socket = socket;
    socket.addEventListener("message", (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return;
      }
      if (event && event.type === "hello") {
        this.onState(this.attempt > 0 ? "resumed" : "live");
        this.attempt = 0;
      }
      if (event && typeof event.type === "string") this.onEvent(event);
    });
    socket.addEventListener("close", (event) => this.closed(socket, event.code));
  }

  async closed(socket, code) {
    if (socket !== this.socket || this.stopped) return;
    this.onState("reconnecting");
    if (code === 1008 || this.attempt > 0) {
      // Refused or logged out elsewhere: find out before trying again.
      if (!(await this.stillLoggedIn())) return;
    }
    const delay = Math.min(30000, 1000 * 2 ** Math.min(this.attempt, 5)) * (0.5 + Math.random() / 2);
    this.attempt += 1;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      if (!this.stopped) this.connect();
    }, delay);
  }
}
