// @ts-check
// The one live feed, for every page that listens: a WebSocket to
// /api/v1/events. Nothing polls; after a lost connection the feed reconnects
// with a growing, jittered delay (about 1 s, doubling up to 30 s). When the
// broker refused the socket (1008: logged out, disabled) or a retry failed, it
// first asks whether the login still holds, and stops for good if not.

import { ApiError, api } from "./api.js";

/**
 * "live" at the first hello, "resumed" at a hello after a reconnect (the page
 * may have missed events: time to reload what it shows), "signed_out" when
 * the login is gone (the feed has stopped), "off" after stop().
 * @typedef {"live" | "resumed" | "reconnecting" | "signed_out" | "off"} FeedState
 */
/**
 * What the broker sends: {type: "hello"} first, then "agent", "session" and
 * "help_request" events. The payloads are the broker's JSON as is: each
 * listener checks what it uses.
 * @typedef {{type: string, [field: string]: any}} FeedEvent
 */
/**
 * @typedef {object} FeedListener
 * @property {(event: FeedEvent) => void} onEvent every event, hello included
 * @property {(state: FeedState) => void} [onState]
 */

const EVENTS_URL = `wss://${location.host}/api/v1/events`;
const CLOSE_POLICY = 1008;

export class EventFeed {
  /** @type {FeedListener["onEvent"]} */
  #onEvent;
  /** @type {(state: FeedState) => void} */
  #onState;
  /** @type {WebSocket | null} */
  #socket = null;
  #timer = 0;
  #attempt = 0;
  #stopped = true;

  /** @param {FeedListener} listener */
  constructor({ onEvent, onState = () => {} }) {
    this.#onEvent = onEvent;
    this.#onState = onState;
  }

  start() {
    if (!this.#stopped) return;
    this.#stopped = false;
    this.#attempt = 0;
    this.#connect();
  }

  stop() {
    this.#halt();
    this.#onState("off");
  }

  #halt() {
    this.#stopped = true;
    clearTimeout(this.#timer);
    if (this.#socket) this.#socket.close(1000);
    this.#socket = null;
  }

  #connect() {
    const socket = new WebSocket(EVENTS_URL);
    this.#socket = socket;
    socket.addEventListener("message", (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return;
      }
      if (!event || typeof event.type !== "string") return;
      if (event.type === "hello") {
        this.#onState(this.#attempt > 0 ? "resumed" : "live");
        this.#attempt = 0;
      }
      this.#onEvent(event);
    });
    socket.addEventListener("close", (event) => this.#closed(socket, event.code));
  }

  /**
   * @param {WebSocket} socket
   * @param {number} code
   */
  async #closed(socket, code) {
    if (socket !== this.#socket || this.#stopped) return;
    this.#onState("reconnecting");
    if (code === CLOSE_POLICY || this.#attempt > 0) {
      const loggedIn = await stillLoggedIn();
      if (socket !== this.#socket || this.#stopped) return;
      if (!loggedIn) {
        this.#halt();
        this.#onState("signed_out");
        return;
      }
    }
    const delay = Math.min(30000, 1000 * 2 ** Math.min(this.#attempt, 5)) * (0.5 + Math.random() / 2);
    this.#attempt += 1;
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      if (!this.#stopped) this.#connect();
    }, delay);
  }
}

/** False only when the broker says the login is gone; unreachable means keep trying. */
async function stillLoggedIn() {
  try {
    await api("GET", "/api/v1/me");
    return true;
  } catch (error) {
    return !(error instanceof ApiError && (error.status === 401 || error.status === 403));
  }
}
