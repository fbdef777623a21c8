// @ts-check
// Replays a recorded screen with noVNC's own decoder: the PC's bytes ("S"
// frames) are handed, at their times, to an RFB client through an object that
// looks like an open WebSocket to noVNC (what it sends back goes nowhere).
// Seeking starts a fresh client and feeds it everything up to the point as
// fast as it takes it; speed scales the clock.
import RFB from "/node_modules/@novnc/novnc/core/rfb.js";

/** @typedef {import("./recording.js").Recording} Recording */

const FEED_SLICE = 2 * 1024 * 1024; // bytes fed before letting the page breathe during a seek

/** An open "WebSocket" whose messages are the recording's. */
class RecordedChannel {
  constructor() {
    this.binaryType = "arraybuffer";
    this.protocol = "binary";
    /** @type {number | string} */
    this.readyState = WebSocket.OPEN;
    /** @type {((event: Event) => void) | null} */
    this.onopen = null;
    /** @type {((event: { data: ArrayBufferLike | Uint8Array }) => void) | null} */
    this.onmessage = null;
    /** @type {((event: Event) => void) | null} */
    this.onerror = null;
    /** @type {((event: { code: number; reason: string; wasClean: boolean }) => void) | null} */
    this.onclose = null;
  }

  /** @param {ArrayBufferLike | Uint8Array} _data what noVNC answers: dropped */
  send(_data) {}

  close() {
    this.readyState = WebSocket.CLOSED;
    queueMicrotask(() => {
      if (this.onclose) this.onclose({ code: 1000, reason: "", wasClean: true });
    });
  }

  /** @param {Uint8Array} bytes */
  deliver(bytes) {
    if (this.onmessage && this.readyState === WebSocket.OPEN) this.onmessage({ data: bytes });
  }
}

export class ScreenPlayer extends EventTarget {
  /**
   * @param {HTMLElement} target where noVNC puts its canvas
   * @param {Recording} recording
   */
  constructor(target, recording) {
    super();
    this.target = target;
    this.recording = recording;
    this.speed = 1;
    this.position = 0; // ms into the recording
    this.playing = false;
    this._next = 0; // index of the next frame to feed
    this._clock = { wall: 0, position: 0 };
    /** @type {RFB | null} */
    this._rfb = null;
    /** @type {RecordedChannel | null} */
    this._channel = null;
    /** @type {number | null} */
    this._timer = null;
    this._seeking = 0; // the seek in progress (a later one wins)
    this._fresh();
  }

  get duration() {
    return this.recording.duration;
  }

  get ended() {
    return this._next >= this.recording.frames.length;
  }

  play() {
    if (this.ended) return;
    this.playing = true;
    this._clock = { wall: performance.now(), position: this.position };
    this._schedule();
    this._changed();
  }

  pause() {
    this.playing = false;
    this._stopTimer();
    this._changed();
  }

  /** @param {number} speed 1, 2, 4 or 8 */
  setSpeed(speed) {
    this.speed = speed;
    if (this.playing) this._clock = { wall: performance.now(), position: this.position };
  }

  /**
   * Show the screen as it was at `ms`: a fresh decoder fed everything up to there.
   * @param {number} ms
   */
  async seek(ms) {
    const seek = ++this._seeking;
    const wasPlaying = this.playing;
    this._stopTimer();
    this._fresh();
    const target = Math.max(0, Math.min(ms, this.duration));
    let fed = 0;
    const frames = this.recording.frames;
    while (this._next < frames.length && frames[this._next].ms <= target) {
      fed += this._feed(frames[this._next++]);
      if (fed >= FEED_SLICE) {
        fed = 0;
        await new Promise((resolve) => setTimeout(resolve, 0));
        if (seek !== this._seeking) return; // a later seek took over
      }
    }
    this.position = target;
    this._clock = { wall: performance.now(), position: target };
    if (wasPlaying && !this.ended) this._schedule();
    else this.playing = false;
    this._changed();
  }

  close() {
    this._stopTimer();
    if (this._rfb) this._rfb.disconnect();
    this._rfb = null;
  }

  _fresh() {
    if (this._rfb) this._rfb.disconnect();
    this.target.replaceChildren();
    this._channel = new RecordedChannel();
    const rfb = new RFB(this.target, this._channel, { shared: true });
    rfb.viewOnly = true;
    rfb.scaleViewport = true;
    rfb.resizeSession = false;
    rfb.focusOnClick = false;
    this._rfb = rfb;
    this._next = 0;
    this.position = 0;
  }

  /**
   * @param {import("./recording.js").Frame} frame
   * @returns {number} bytes fed
   */
  _feed(frame) {
    if (frame.kind !== "S" || !this._channel) return 0;
    this._channel.deliver(frame.payload);
    return frame.payload.length;
  }

  _schedule() {
    this._stopTimer();
    this._timer = window.setTimeout(() => this._tick(), 15);
  }

  _stopTimer() {
    if (this._timer !== null) window.clearTimeout(this._timer);
    this._timer = null;
  }

  _tick() {
    this._timer = null;
    if (!this.playing) return;
    const now = this._clock.position + (performance.now() - this._clock.wall) * this.speed;
    const frames = this.recording.frames;
    while (this._next < frames.length && frames[this._next].ms <= now) this._feed(frames[this._next++]);
    this.position = Math.min(now, this.duration);
    if (this.ended) {
      this.position = this.duration;
      this.playing = false;
    } else {
      this._schedule();
    }
    this._changed();
  }

  _changed() {
    this.dispatchEvent(new Event("change"));
  }
}
