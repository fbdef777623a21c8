// @ts-check
// What the console knows right now; filled over REST, kept fresh by the live feed.

/**
 * The logged-in user, as GET /api/v1/me gives it.
 * @typedef {object} Me
 * @property {string} username
 * @property {string} full_name
 * @property {"admin" | "technician"} role
 * @property {boolean} totp_enrolled
 * @property {boolean} must_enrol_totp
 * @property {string} csrf_token
 */
/**
 * A machine as GET /api/v1/agents gives it; the text fields are the agent's own words.
 * @typedef {object} Agent
 * @property {string} id
 * @property {string} hostname
 * @property {boolean} online
 * @property {string} [os]
 * @property {string} [user]
 * @property {string} [version] what the agent reports
 * @property {"current" | "outdated" | "unsupported" | "unknown"} [version_status] against this broker
 * @property {boolean} [system] the machine service (one agent per PC) runs there
 * @property {string | null} [signed_in] who is signed in now (null: nobody, or offline)
 * @property {string} [screen] the screen engine its session offers: x11, wlroots, portal,
 *   none ("" or absent: the agent did not say)
 * @property {string} [screen_problem] why the screen cannot be shared (screen "none")
 * @property {string} [desktop] the session the agent saw ("wayland: sway")
 * @property {Monitor[]} [monitors] the session's monitors a screen request may name
 * @property {boolean} [all_monitors] its agent shows every monitor at once (monitor "all")
 * @property {number | null} [last_seen]
 * @property {boolean} [removed]
 * @property {string[]} [groups] set by admins (PATCH /api/v1/agents/{id})
 */
/**
 * One monitor of a PC's session (GET /api/v1/agents ``monitors``).
 * @typedef {object} Monitor
 * @property {string} name
 * @property {number} width
 * @property {number} height
 * @property {number} x
 * @property {number} y
 * @property {boolean} primary
 */
/**
 * A help request: the code the user reads on the phone.
 * @typedef {object} HelpRequest
 * @property {string} code
 * @property {string} agent_id
 * @property {string} hostname
 * @property {string} message
 * @property {number} created
 * @property {number} expires
 * @property {string | null} session_id
 */

export const state = {
  /** @type {Me | null} */
  me: null,
  /** @type {Map<string, Agent>} id → machine */
  agents: new Map(),
  /** @type {Map<string, import("../lib/session-states.js").Session>} id → session */
  sessions: new Map(),
  /** @type {Map<string, HelpRequest>} code → help request */
  help: new Map(),
  view: "",
};

export function isAdmin() {
  return Boolean(state.me && state.me.role === "admin");
}

/** @param {unknown} code */
export function formatCode(code) {
  const digits = String(code || "").replace(/\D/g, "");
  return digits.length === 6 ? `${digits.slice(0, 3)} ${digits.slice(3)}` : digits;
}
