// @ts-check
// A screen recording (allowhelp-rfb-1, docs/recordings.md) read into frames:
// MAGIC "AHRFB001", u32 header length, JSON header, then frames of
// u8 kind ("S" from the PC, "C" from a technician, "M" a marker),
// u32 milliseconds since the start, u32 length, payload. Big-endian.

const MAGIC = "AHRFB001";
const KINDS = new Set(["S", "C", "M"]);

/**
 * @typedef {object} Frame
 * @property {"S" | "C" | "M"} kind
 * @property {number} ms milliseconds since the start
 * @property {Uint8Array} payload
 */

/**
 * @typedef {object} Recording
 * @property {Record<string, unknown>} meta the header
 * @property {Frame[]} frames every frame, in order
 * @property {number} duration the last frame's time, in ms
 * @property {string} sender who typed, if anyone did: the first "C" frame's sender
 */

/**
 * Parse a recording; throws an Error that says what is wrong with a bad one.
 * @param {ArrayBuffer} buffer
 * @returns {Recording}
 */
export function parseRecording(buffer) {
  const bytes = new Uint8Array(buffer);
  const view = new DataView(buffer);
  if (bytes.length < 12 || new TextDecoder().decode(bytes.subarray(0, 8)) !== MAGIC) {
    throw new Error("not an allowhelp screen recording");
  }
  const headerLength = view.getUint32(8);
  if (12 + headerLength > bytes.length) throw new Error("the recording's header is cut short");
  const meta = JSON.parse(new TextDecoder().decode(bytes.subarray(12, 12 + headerLength)));
  /** @type {Frame[]} */
  const frames = [];
  let at = 12 + headerLength;
  while (at + 9 <= bytes.length) {
    const kind = String.fromCharCode(bytes[at]);
    const ms = view.getUint32(at + 1);
    const length = view.getUint32(at + 5);
    if (!KINDS.has(kind) || at + 9 + length > bytes.length) break;
    frames.push({ kind: /** @type {"S" | "C" | "M"} */ (kind), ms, payload: bytes.subarray(at + 9, at + 9 + length) });
    at += 9 + length;
  }
  const duration = frames.length ? frames[frames.length - 1].ms : 0;
  const typed = frames.find((frame) => frame.kind === "C");
  const sender = typed ? new TextDecoder().decode(typed.payload.subarray(1, 1 + typed.payload[0])) : "";
  return { meta, frames, duration, sender };
}

// noVNC's own pixel format (32 bpp, depth 24, little-endian, true colour, 8 bits
// a channel, red at bit 0): the player decodes every picture in it.
const NOVNC_FORMAT = [32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 0, 8, 16];

/**
 * The pixel format the recorded pictures are in: the viewer's SetPixelFormat
 * (the first message after its ClientInit) if it sent one, else the PC's
 * ServerInit. Its first 13 bytes (bpp … blue shift).
 * @param {Recording} recording
 * @returns {number[]}
 */
function pixelFormat(recording) {
  const sent = concat(recording.frames.filter((f) => f.kind === "C").map((f) => f.payload.subarray(1 + f.payload[0])), 14 + 20);
  // version (12), security type (1), ClientInit (1), then SetPixelFormat: type, 3 padding, 16 bytes
  if (sent.length >= 34 && sent[14] === 0) return Array.from(sent.subarray(18, 31));
  const got = concat(recording.frames.filter((f) => f.kind === "S").map((f) => f.payload), 64);
  // version (12), security list as the broker tidies it (count 1, None), result (4), ServerInit: size (4), format
  return Array.from(got.subarray(22, 35));
}

/**
 * Whether the player shows the recording's colours as they were (false: a viewer
 * other than the console's noVNC, with another pixel format, was recorded).
 * @param {Recording} recording
 */
export function coloursAsRecorded(recording) {
  const format = pixelFormat(recording);
  return format.length === NOVNC_FORMAT.length && format.every((byte, i) => byte === NOVNC_FORMAT[i]);
}

/**
 * The first `limit` bytes of some chunks, joined.
 * @param {Uint8Array[]} chunks
 * @param {number} limit
 */
function concat(chunks, limit) {
  const out = new Uint8Array(limit);
  let at = 0;
  for (const chunk of chunks) {
    if (at >= limit) break;
    const part = chunk.subarray(0, limit - at);
    out.set(part, at);
    at += part.length;
  }
  return out.subarray(0, at);
}
