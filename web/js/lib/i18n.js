// @ts-check
// The console's language: English, French or Dutch, the technician's choice
// (kept in this browser), else the first of the browser's languages we speak
// (navigator.languages: what Accept-Language says), else English.
//
// Pages mark their words with data-i18n=KEY (text), data-i18n-placeholder,
// data-i18n-aria-label and data-i18n-title; scripts call t(KEY, {name}).
// Only the console's own words are translated: host names, user names, reasons
// and phrases are shown exactly as they came. Catalogs: ../i18n/*.js, checked
// for completeness by scripts/i18n.py (docs/i18n.md). The API and the audit log
// stay in their one machine-readable form whatever the language.

import en from "../i18n/en.js";
import fr from "../i18n/fr.js";
import nl from "../i18n/nl.js";

/** @type {Record<string, Record<string, string>>} */
const CATALOGS = { en, fr, nl };
/** The choices, each named in its own language. */
export const LANGUAGES = /** @type {const} */ ([["en", "English"], ["fr", "Français"], ["nl", "Nederlands"]]);
const STORED = "allowhelp.language";
const ATTRIBUTES = ["placeholder", "aria-label", "title", "alt"];

/**
 * The language to use: a stored choice we speak, else the first wanted one, else English.
 * @param {string | null} stored
 * @param {readonly string[]} wanted BCP 47 tags, best first ("fr-BE", "nl", "en-US")
 */
export function pickLanguage(stored, wanted) {
  if (stored && Object.hasOwn(CATALOGS, stored)) return stored;
  for (const tag of wanted) {
    const primary = tag.toLowerCase().split("-")[0];
    if (Object.hasOwn(CATALOGS, primary)) return primary;
  }
  return "en";
}

function storedChoice() {
  try {
    return localStorage.getItem(STORED);
  } catch {
    return null; // storage refused: the browser's languages decide
  }
}

export const language = pickLanguage(storedChoice(), navigator.languages || [navigator.language]);

/**
 * The locale for dates and numbers: the browser's own tag for this language when it
 * has one (fr-BE writes dates as in Belgium), else the language.
 */
export const locale = (navigator.languages || []).find(
  (tag) => tag.toLowerCase().split("-")[0] === language,
) || language;

/**
 * The text of `key` in the console's language, `{name}`s filled from `values`.
 * @param {string} key
 * @param {Record<string, string | number>} [values]
 */
export function t(key, values = {}) {
  const text = CATALOGS[language][key] ?? en[key] ?? key;
  return text.replace(/\{([a-z_]+)\}/g, (whole, name) =>
    Object.hasOwn(values, name) ? String(values[name]) : whole);
}

const plurals = new Intl.PluralRules(language);

/**
 * `t` for a sentence about `count` things: `KEY.one` when the language says "one"
 * of `count` (French says it of 0 too), else `KEY.other`; `{count}` is filled in,
 * written as the language writes numbers.
 * @param {string} key
 * @param {number} count
 * @param {Record<string, string | number>} [values]
 */
export function tn(key, count, values = {}) {
  const form = plurals.select(count) === "one" ? "one" : "other";
  return t(`${key}.${form}`, { count: count.toLocaleString(locale), ...values });
}

/**
 * The text of `key` if the catalogs have it, else "" (an API error code we have
 * no words for keeps the broker's own message).
 * @param {string} key
 */
export function known(key) {
  return Object.hasOwn(en, key) ? t(key) : "";
}

/** Put the page's marked words in the console's language. */
export function translatePage(root = document) {
  document.documentElement.lang = language;
  for (const node of root.querySelectorAll("[data-i18n]")) {
    const key = node.getAttribute("data-i18n");
    if (key) node.textContent = t(key);
  }
  for (const attribute of ATTRIBUTES) {
    for (const node of root.querySelectorAll(`[data-i18n-${attribute}]`)) {
      const key = node.getAttribute(`data-i18n-${attribute}`);
      if (key) node.setAttribute(attribute, t(key));
    }
  }
}

/**
 * Fill a language <select> and keep the technician's choice (then reload: every
 * view is drawn again in the new language).
 * @param {HTMLSelectElement} select
 */
export function languagePicker(select) {
  select.replaceChildren(...LANGUAGES.map(([code, name]) => {
    const option = document.createElement("option");
    option.value = code;
    option.textContent = name;
    option.lang = code;
    option.selected = code === language;
    return option;
  }));
  select.addEventListener("change", () => {
    try {
      localStorage.setItem(STORED, select.value);
    } catch {
      return;
    }
    location.reload();
  });
}
