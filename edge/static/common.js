// Shared by the pages: one way to call the daemon (errors in words), local time with zone, element builder.
"use strict";

export const $ = (id) => document.getElementById(id);

// A daemon that does not answer is said in words, never as "TypeError: Failed to fetch".
export const UNREACHABLE = "The daemon is not answering (stopped, or the connection to it is down). " +
  "Nothing was sent; try again when the status shows it is back.";

/** fetch + JSON: {ok, status, data, message}; message is the server's `detail` or a sentence. */
export async function api(path, options = {}) {
  let r;
  try {
    r = await fetch(path, { cache: "no-store", ...options });
  } catch (e) {
    return { ok: false, status: 0, data: null, message: UNREACHABLE, offline: true };
  }
  const type = r.headers.get("content-type") || "";
  let data = null;
  if (type.includes("json")) data = await r.json().catch(() => null);
  const message = r.ok ? "" : (data && data.detail) || ("The daemon refused the request (HTTP " + r.status + ").");
  return { ok: r.ok, status: r.status, data, message, field: data && data.field, response: r };
}

const TIME_FORMAT = { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
  second: "2-digit", timeZoneName: "short" };

/** An ISO-8601 time as the cart's local time with its zone ("1 Dec 2025, 14:03:22 CET"). */
export function localTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return isNaN(d) ? String(iso) : d.toLocaleString(undefined, TIME_FORMAT);
}

/** h("a", {href: "/x", class: "y"}, "text", child…): DOM without innerHTML (no markup from data). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("data-")) el.setAttribute(k, v);
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === "") continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

export const SIDE_WORDS = { L: "left testis", R: "right testis" };
