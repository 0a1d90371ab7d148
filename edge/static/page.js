// Every page: local times with zone, the source pill, the lost-source banner and the "offline" state.
// The banner's sentence comes from the server (source.banner), the same field the template renders.
"use strict";
import { $, api, localTime } from "./common.js";

document.querySelectorAll("time[data-local]").forEach((t) => {
  t.textContent = localTime(t.getAttribute("datetime"));
});

const OFFLINE = "The daemon is not answering: the pill says offline until it is back. Nothing is lost; " +
  "results already stored stay stored.";

async function pollHealth() {
  const pill = $("source-state"), banner = $("source-banner"), offline = $("offline-banner");
  const r = await api("/api/health");
  if (r.offline || !r.ok || !r.data) {
    pill.textContent = "offline";
    pill.className = "pill offline";
    offline.textContent = r.offline ? OFFLINE : r.message;
    offline.hidden = false;
    document.dispatchEvent(new CustomEvent("noa:health", { detail: null }));
  } else {
    const s = r.data.source;
    offline.hidden = true;
    pill.textContent = s.state;
    pill.className = "pill " + s.state;
    banner.textContent = s.banner || "";
    banner.hidden = !s.banner;
    document.dispatchEvent(new CustomEvent("noa:health", { detail: r.data }));
  }
  setTimeout(pollHealth, 1500);
}
pollHealth();

// The history search: empty fields are left out of the address (GET form), so "no date" means no filter.
document.querySelectorAll("form.search").forEach((f) => f.addEventListener("submit", () => {
  f.querySelectorAll("input").forEach((i) => { if (!i.value.trim()) i.disabled = true; });
}));
