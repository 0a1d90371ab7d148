// noa-edge live page: live view, draggable/resizable ROI, Analyze, result panel. Vanilla JS, no CDN.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const live = $("live"), stage = $("stage"), roiEl = $("roi"), handle = $("roi-handle");
  const state = { frameW: 0, frameH: 0, roi: null, paused: false, lastExamId: 0, busy: false, userMovedRoi: false };

  // ---------------------------------------------------------------- live view (periodic JPEG snapshots)
  let liveUrl = null;
  async function pollFrame() {
    if (!state.paused) {
      try {
        const r = await fetch("/live.jpg", { cache: "no-store" });
        if (r.ok) {
          const size = (r.headers.get("X-Frame-Size") || "0x0").split("x").map(Number);
          const blob = await r.blob();
          const url = URL.createObjectURL(blob);
          live.onload = () => { if (liveUrl) URL.revokeObjectURL(liveUrl); liveUrl = url; };
          live.src = url;
          const changed = size[0] !== state.frameW || size[1] !== state.frameH;
          state.frameW = size[0]; state.frameH = size[1];
          $("no-frame").hidden = true;
          if (changed || !state.roi) await autoRoi();
        } else {
          $("no-frame").hidden = false;
        }
      } catch (e) { $("no-frame").hidden = false; }
    }
    setTimeout(pollFrame, 250);
  }

  // ---------------------------------------------------------------- source state banner
  async function pollHealth() {
    try {
      const r = await fetch("/api/health", { cache: "no-store" });
      if (r.ok) {
        const h = await r.json();
        const s = h.source;
        $("source-state").textContent = s.state;
        $("source-state").className = "pill " + s.state;
        $("frozen").hidden = !s.frozen;
        const banner = $("source-banner");
        const lost = s.state === "lost" || s.state === "reconnecting";
        banner.hidden = !lost;
        if (lost) banner.textContent = "Source lost: " + (s.source || "") + " — " + (s.error || "") + " (reconnecting…)";
      }
    } catch (e) {
      const banner = $("source-banner");
      banner.hidden = false; banner.textContent = "The daemon is not answering.";
    }
    setTimeout(pollHealth, 1500);
  }

  // ---------------------------------------------------------------- automatic analyses (freeze / pushed images)
  async function pollExams() {
    try {
      const r = await fetch("/api/exams?limit=1", { cache: "no-store" });
      if (r.ok) {
        const j = await r.json();
        const e = j.exams[0];
        if (e && e.id > state.lastExamId) {
          const first = state.lastExamId === 0;
          state.lastExamId = e.id;
          if (!first && e.trigger !== "button" && e.trigger !== "upload" && !state.busy) showResult(e);
        }
      }
    } catch (e) { /* health banner reports it */ }
    setTimeout(pollExams, 2000);
  }

  // ---------------------------------------------------------------- ROI box (frame pixel coordinates)
  function scale() { return live.clientWidth && state.frameW ? live.clientWidth / state.frameW : 1; }
  function drawRoi() {
    if (!state.roi) { roiEl.hidden = true; return; }
    const s = scale(), [x, y, w, h] = state.roi;
    roiEl.hidden = false;
    roiEl.style.left = (x * s) + "px"; roiEl.style.top = (y * s) + "px";
    roiEl.style.width = (w * s) + "px"; roiEl.style.height = (h * s) + "px";
    $("roi-text").textContent = state.roi.join(", ");
  }
  function clampRoi(r) {
    let [x, y, w, h] = r.map(Math.round);
    w = Math.max(16, Math.min(w, state.frameW)); h = Math.max(16, Math.min(h, state.frameH));
    x = Math.max(0, Math.min(x, state.frameW - w)); y = Math.max(0, Math.min(y, state.frameH - h));
    return [x, y, w, h];
  }
  async function autoRoi(force) {
    if (state.userMovedRoi && !force) return;
    try {
      const r = await fetch("/api/roi", { cache: "no-store" });
      if (r.ok) { const j = await r.json(); state.roi = j.roi; drawRoi(); }
    } catch (e) { /* keep the old box */ }
  }
  let drag = null;
  function startDrag(ev, mode) {
    if (!state.roi) return;
    ev.preventDefault(); ev.stopPropagation();
    drag = { mode, x0: ev.clientX, y0: ev.clientY, roi0: state.roi.slice() };
    window.addEventListener("pointermove", onDrag);
    window.addEventListener("pointerup", endDrag, { once: true });
  }
  function onDrag(ev) {
    if (!drag) return;
    const s = scale(), dx = (ev.clientX - drag.x0) / s, dy = (ev.clientY - drag.y0) / s;
    const [x, y, w, h] = drag.roi0;
    state.roi = clampRoi(drag.mode === "move" ? [x + dx, y + dy, w, h] : [x, y, w + dx, h + dy]);
    state.userMovedRoi = true;
    drawRoi();
  }
  function endDrag() { drag = null; window.removeEventListener("pointermove", onDrag); }
  roiEl.addEventListener("pointerdown", (ev) => startDrag(ev, "move"));
  handle.addEventListener("pointerdown", (ev) => startDrag(ev, "resize"));
  window.addEventListener("resize", drawRoi);
  live.addEventListener("load", drawRoi);

  $("auto-roi").addEventListener("click", () => { state.userMovedRoi = false; autoRoi(true); });
  $("pause").addEventListener("click", () => {
    state.paused = !state.paused;
    $("pause").textContent = state.paused ? "Resume view" : "Pause view";
  });

  // ---------------------------------------------------------------- form: units, ranges, Lambert volume
  const dimIds = ["length_cm", "width_cm", "height_cm"];
  function lambert() {
    const v = dimIds.map((id) => parseFloat($(id).value));
    if (v.every((n) => isFinite(n) && n > 0)) {
      $("volume-calc").textContent = "0.71 × " + v.join(" × ") + " = " + (0.71 * v[0] * v[1] * v[2]).toFixed(2) + " mL";
    } else { $("volume-calc").textContent = ""; }
  }
  dimIds.forEach((id) => $(id).addEventListener("input", lambert));

  function validate() {
    const problems = [];
    document.querySelectorAll("#analyze-form input[type=number]").forEach((inp) => {
      inp.classList.remove("invalid");
      if (inp.value.trim() === "") { if (inp.validity.badInput) { problems.push(inp.dataset.label + ": not a number"); inp.classList.add("invalid"); } return; }
      const v = Number(inp.value), lo = Number(inp.min), hi = Number(inp.max);
      if (!isFinite(v)) { problems.push(inp.dataset.label + ": not a number"); inp.classList.add("invalid"); }
      else if (v < lo || v > hi) {
        problems.push(inp.dataset.label + " = " + v + " " + inp.dataset.unit + " is outside the plausible range " + lo + "–" + hi + " " + inp.dataset.unit);
        inp.classList.add("invalid");
      }
    });
    const dims = dimIds.filter((id) => $(id).value.trim() !== "");
    if (dims.length && dims.length < 3) problems.push("Testis dimensions: give length, width and height (cm), or the volume in mL");
    if (dims.length && $("volume_ml").value.trim() !== "") problems.push("Give either the volume in mL or the three dimensions, not both");
    return problems;
  }

  function showError(msg) { const el = $("form-error"); el.textContent = msg; el.hidden = !msg; }

  $("analyze-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const problems = validate();
    if (problems.length) { showError(problems.join(". ")); return; }
    showError("");
    const fd = new FormData();
    ["fsh", "volume_ml", "edv", "length_cm", "width_cm", "height_cm", "patient_id"].forEach((id) => {
      const v = $(id).value.trim(); if (v !== "") fd.append(id, v);
    });
    if (state.roi) fd.append("roi", state.roi.join(","));
    state.busy = true; $("analyze").disabled = true; $("analyze").textContent = "Analyzing…";
    try {
      const r = await fetch("/api/analyze", { method: "POST", body: fd });
      const j = await r.json().catch(() => ({ detail: "HTTP " + r.status }));
      if (!r.ok) {
        showError(j.detail || ("HTTP " + r.status));
        if (j.field && $(j.field)) $(j.field).classList.add("invalid");
      } else {
        state.lastExamId = Math.max(state.lastExamId, j.id);
        showResult(j);
      }
    } catch (e) { showError("The daemon did not answer: " + e); }
    finally { state.busy = false; $("analyze").disabled = false; $("analyze").textContent = "Analyze"; }
  });

  // ---------------------------------------------------------------- result panel
  const fmt = (p) => (p === null || p === undefined) ? "–" : Number(p).toFixed(3);
  async function showResult(e) {
    $("result").hidden = false;
    $("result-meta").textContent = "exam " + e.id + " · " + e.trigger + (e.trigger === "freeze" ? " (automatic on freeze)" : "");
    const label = $("result-label");
    label.textContent = e.label; label.className = "label " + e.label;
    $("result-basis").textContent = e.basis === "nomogram" ? "nomogram (DL + FSH + volume + EDV)" : "DL-only result — clinical values missing";
    $("result-dl").textContent = fmt(e.dl_probability);
    $("result-nomo").textContent = fmt(e.nomogram_probability);
    $("result-threshold").textContent = Number(e.threshold).toFixed(3);
    const rows = Object.entries(e.points || {}).map(([k, v]) => "<tr><th>points: " + k + "</th><td>" + v.toFixed(1) + "</td></tr>");
    if (e.total_points !== null && e.total_points !== undefined) rows.push("<tr><th>total points</th><td>" + e.total_points.toFixed(1) + "</td></tr>");
    $("points-table").innerHTML = rows.join("");
    $("result-notes").textContent = (e.notes || []).join(" · ");
    $("result-overlay").src = e.links.overlay;
    $("timings").textContent = "timings (ms): " + Object.entries(e.timings || {}).map(([k, v]) => k + " " + v.toFixed(1)).join(" · ");
    $("exports").innerHTML = '<a href="' + e.links.page + '">exam page</a> · <a href="' + e.links.report_pdf + '">PDF</a> · <a href="' +
      e.links.report_png + '">PNG</a> · <a href="' + e.links.dicom_sc + '">DICOM SC</a> · <a href="' + e.links.dicom_sr + '">DICOM SR</a>';
    try {
      const r = await fetch(e.links.nomogram_svg, { cache: "no-store" });
      $("nomogram").innerHTML = r.ok ? await r.text() : "";
    } catch (err) { $("nomogram").innerHTML = ""; }
    $("result").dataset.examId = e.id;
  }

  pollFrame(); pollHealth(); pollExams();
})();
