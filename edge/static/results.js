// The result panel, the list of results to open, and the patient-level summary of both testes.
// A result the user is reading is never replaced by itself: new results (automatic freezes, folder, DICOM,
// other clients) are listed and the user opens them.
"use strict";
import { $, api, h, localTime, SIDE_WORDS } from "./common.js";

const AUTOMATIC = new Set(["freeze", "folder", "dicom"]);

export function createResults({ isBusy, openPatient }) {
  const own = new Set();          // exams this page made (Analyze): not listed as new
  let cursor = null;              // newest exam id seen

  // ------------------------------------------------------------------ the panel
  function meta(e) {
    return ["exam #" + e.id, localTime(e.created), e.trigger + (AUTOMATIC.has(e.trigger) ? " (automatic)" : ""),
      e.patient_id ? "patient " + e.patient_id : "", SIDE_WORDS[e.side] || ""].filter(Boolean).join(" · ");
  }

  const rows = (items, suffix = "") => (items || []).map((i) => h("tr", {}, h("th", {}, i.label), h("td", {}, i.value_text + suffix)));

  async function show(e, { focus = false } = {}) {
    const d = e.display || {};
    const panel = $("result");
    panel.hidden = false;
    panel.dataset.examId = e.id;
    $("result-meta").textContent = meta(e);
    $("result-label").textContent = e.label;
    $("result-label").className = "label " + e.label;
    $("result-sentence").textContent = d.sentence || "";
    // an image unlike the training data: the warning first, the probability struck through (edge/wording.py)
    $("result-ood").hidden = !e.ood;
    $("result-ood-text").textContent = e.ood ? d.ood_text || "" : "";
    $("result-ood-detail").textContent = e.ood ? d.ood_detail || "" : "";
    panel.classList.toggle("unreliable", !!e.ood);
    $("result-prob-label").textContent = "Probability of " + ((e.labels && e.labels.positive) || "NOA");
    $("result-prob").textContent = d.probability_text || "";
    $("result-threshold").textContent = d.threshold_text || "";
    $("result-dl").textContent = d.dl_probability_text || "";
    $("result-dl-row").hidden = e.nomogram_probability === null || e.nomogram_probability === undefined;
    $("result-basis").textContent = d.basis_text || "";
    $("result-threshold-why").textContent = d.threshold_explanation || "";
    $("inputs-table").replaceChildren(...rows(d.inputs));
    $("points-table").replaceChildren(...rows(d.points, " points"));
    $("result-notes").textContent = (e.notes || []).join(" · ");
    $("result-frame").textContent = (e.frame_sha256 ? "frame pixels sha256 " + e.frame_sha256.slice(0, 12) + "… · " : "") +
      "ROI " + (e.roi || []).join(", ") + " px (" + (e.roi_method === "manual" ? "moved by the user" : "proposed") + ")" +
      (e.context === "patient_context" ? " · values from the open patient" : "");
    $("result-overlay").src = e.links.overlay;
    const legend = $("cam-legend");
    $("cam-legend-call").textContent = e.label === "OA" ? legend.dataset.oa : e.label === "NOA" ? legend.dataset.noa : "";
    $("timings").textContent = Object.entries(e.timings || {}).map(([k, v]) => k + " " + Number(v).toFixed(1) + " ms").join(" · ");
    const l = e.links;
    $("exports").replaceChildren(h("a", { href: l.page }, "exam page"), " · ", h("a", { href: l.report_pdf }, "PDF"), " · ",
      h("a", { href: l.report_png }, "PNG"), " · ", h("a", { href: l.dicom_sc }, "DICOM SC"), " · ", h("a", { href: l.dicom_sr }, "DICOM SR"));
    dropNotice(e.id);
    if (focus) panel.focus();
    const svg = e.nomogram_probability !== null && e.nomogram_probability !== undefined ? await api(l.nomogram_svg) : null;
    if (String(panel.dataset.examId) !== String(e.id)) return;   // another result was opened meanwhile
    if (svg && svg.ok && svg.response) {
      $("nomogram").innerHTML = await svg.response.text();   // our own daemon's SVG (escaped server-side)
      $("nomogram-panel").hidden = false;
    } else {
      $("nomogram").replaceChildren();
      $("nomogram-panel").hidden = true;
    }
    if (e.patient_id) refreshSummary(e.patient_id);
  }

  function clear() {
    $("result").hidden = true;
    delete $("result").dataset.examId;
    $("nomogram").replaceChildren();
    $("nomogram-panel").hidden = true;
    $("patient-summary").hidden = true;
  }

  // ------------------------------------------------------------------ results to open
  function notice(e, why) {
    if (document.querySelector('#notice-list [data-exam="' + e.id + '"]')) return;
    const words = (why || (AUTOMATIC.has(e.trigger) ? "New automatic result" : "New result")) + " #" + e.id + " — " + e.label +
      (e.patient_id ? ", patient " + e.patient_id : "") + (e.side ? ", " + SIDE_WORDS[e.side] : "") + " (" + localTime(e.created) + ")";
    const btn = h("button", { type: "button", class: "link", "data-exam": String(e.id) }, words + " — open");
    btn.addEventListener("click", async () => {
      const r = await api("/api/exams/" + e.id);
      if (r.ok) show(r.data, { focus: true });
      else btn.textContent = words + " — could not be opened: " + r.message;
    });
    $("notice-list").prepend(h("li", { "data-exam": String(e.id) }, btn));
    $("notices").hidden = false;
  }

  function dropNotice(id) {
    const li = document.querySelector('#notice-list li[data-exam="' + id + '"]');
    if (li) li.remove();
    $("notices").hidden = !$("notice-list").children.length;
  }

  async function poll() {
    if (!isBusy()) {
      if (cursor === null) {
        const r = await api("/api/exams?limit=1");
        if (r.ok) {
          const latest = r.data.exams[0];
          cursor = latest ? latest.id : 0;
          if (latest) notice(latest, "Latest result");
        }
      } else {
        const r = await api("/api/exams?since_id=" + cursor);
        if (r.ok) {
          for (const e of r.data.exams) {           // oldest first
            cursor = Math.max(cursor, e.id);
            if (own.has(e.id)) continue;   // (an own exam listed by a racing poll is dropped by show())
            notice(e);
            const p = openPatient();
            if (p && e.patient_id === p) refreshSummary(p);
          }
        }
      }
    }
    setTimeout(poll, 1500);
  }

  // ------------------------------------------------------------------ both testes of the open patient
  async function refreshSummary(pid) {
    const open = openPatient();
    if (!open || pid !== open) return;
    const r = await api("/api/patients/" + encodeURIComponent(pid) + "/summary");
    const s = r.ok && r.data;
    const sides = s && s.sides ? ["L", "R"].filter((k) => s.sides[k]) : [];
    if (!s || sides.length < 2 || !s.patient || openPatient() !== pid) { $("patient-summary").hidden = true; return; }
    $("summary-patient").textContent = pid;
    $("summary-sides").replaceChildren(...sides.map((k) => {
      const e = s.sides[k], d = e.display || {};
      const open = h("button", { type: "button", class: "link" }, "open exam #" + e.id);
      open.addEventListener("click", () => show(e, { focus: true }));
      return h("div", { class: "side-card", "data-side": k }, h("h3", {}, SIDE_WORDS[k]),
        h("div", { class: "verdict" }, h("span", { class: "label " + e.label }, e.label), " ", d.sentence || ""),
        h("p", { class: "muted small" }, localTime(e.created), " · ", open));
    }));
    const p = s.patient;
    $("summary-label").textContent = p.label;
    $("summary-label").className = "label " + p.label;
    $("summary-sentence").textContent = p.sentence || "";
    $("summary-rule").textContent = p.rule || s.rule || "";
    $("patient-summary").hidden = false;
  }

  return {
    show, clear, poll, refreshSummary,
    markOwn(id) { own.add(id); dropNotice(id); },
  };
}
