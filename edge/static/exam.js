// Exam page: "Send to PACS" (shown only when the daemon has a --pacs peer).
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
    } catch (e) { out.textContent = "not sent: the daemon is not answering"; }
    btn.disabled = false;
  });
})();
