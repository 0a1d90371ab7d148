"use strict";
(function () {
  const btn = document.getElementById("push");
  if (!btn) return;
  btn.addEventListener("click", async () => {
    const out = document.getElementById("push-result");
    btn.disabled = true; out.textContent = "sending…";
    try {
      const r = await fetch("/api/exams/" + btn.dataset.exam + "/push", { method: "POST" });
      const j = await r.json();
      out.textContent = r.ok ? (j.ok ? "stored on the PACS" : "PACS answered with a failure status") : (j.detail || ("HTTP " + r.status));
    } catch (e) { out.textContent = "failed: " + e; }
    btn.disabled = false;
  });
})();
