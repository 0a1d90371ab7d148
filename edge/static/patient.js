// The patient context form: patient ID + FSH + volume (or L×W×H) + EDV. Every typed value is checked by the
// daemon's one parser (POST /api/parse) as it is typed; its message stands next to the field. "Open patient"
// makes the values the open context (PUT /api/context); "New patient" clears form, context and result.
"use strict";
import { $, api, localTime } from "./common.js";

export const DECIMALS = ["fsh", "volume_ml", "length_cm", "width_cm", "height_cm", "edv"];
const FIELDS = ["patient_id", ...DECIMALS];

export function createPatientForm({ onCleared, onContext }) {
  const touched = new Set();
  let seq = 0;
  let context = null;       // the open context as the daemon holds it, or null
  let refused = false;      // the form error is a refusal naming bad fields (cleared once they are fixed)

  const label = (name) => ($(name).labels[0] ? $(name).labels[0].childNodes[0].textContent.trim() : name);

  function values() {
    const out = {};
    for (const name of FIELDS) {
      const v = $(name).value;
      if (v.trim() !== "") out[name] = v;   // sent as typed; the daemon parses and records the raw text
    }
    return out;
  }

  function formData() {
    const fd = new FormData();
    for (const [k, v] of Object.entries(values())) fd.append(k, v);
    return fd;
  }

  function setMessage(name, msg) {
    const el = $(name + "-msg"), inp = $(name);
    if (!el) return;
    el.textContent = msg || "";
    el.hidden = !msg;
    inp.classList.toggle("invalid", !!msg);
    if (msg) inp.setAttribute("aria-invalid", "true"); else inp.removeAttribute("aria-invalid");
  }

  function showErrors(errors, all) {
    for (const name of FIELDS) {
      const msg = errors[name];
      if (!msg) setMessage(name, "");
      else if (all || touched.has(name)) setMessage(name, msg);
    }
  }

  /** Ask the daemon's parser about every field. all: show messages on untouched fields too (on submit). */
  async function check(all) {
    const mine = ++seq;
    const r = await api("/api/parse", { method: "POST", body: formData() });
    if (mine !== seq && !all) return null;   // a newer check is under way
    if (!r.ok || !r.data) return { ok: false, errors: {}, message: r.message };
    const errors = r.data.errors || {};
    showErrors(errors, all);
    if (refused && !Object.keys(errors).length) showFormError("");
    return { ok: Object.keys(errors).length === 0, errors, values: r.data.values };
  }

  let timer = null;
  for (const name of DECIMALS) {
    const inp = $(name);
    inp.addEventListener("input", () => {
      touched.add(name);
      clearTimeout(timer);
      timer = setTimeout(() => check(false), 300);
    });
    inp.addEventListener("blur", () => { if (inp.value.trim() !== "" || touched.has(name)) { touched.add(name); check(false); } });
  }
  $("patient_id").addEventListener("input", () => setMessage("patient_id", ""));

  function showContext(ctx) {
    context = ctx && ctx.patient_id ? ctx : null;
    $("open-patient").textContent = context ? "Update patient" : "Open patient";
    $("context-status").textContent = context
      ? "Patient " + context.patient_id + " open since " + localTime(context.opened_at) +
        ". Automatic analyses use this ID and these values."
      : "No patient open: automatic results use no clinical values.";
    onContext(context);
  }

  function fill(ctx) {
    const raw = (ctx && ctx.raw) || {};
    for (const name of FIELDS) {
      const v = name === "patient_id" ? ctx.patient_id : raw[name];
      $(name).value = v === null || v === undefined ? "" : String(v);
    }
    if (["length_cm", "width_cm", "height_cm"].some((n) => $(n).value)) $("dims").open = true;
  }

  function clearForm() {
    for (const name of FIELDS) { $(name).value = ""; setMessage(name, ""); }
    touched.clear();
    document.querySelector("input[name=side][value='']").checked = true;
    showFormError("");
  }

  $("open-patient").addEventListener("click", async () => {
    const checked = await check(true);
    if (checked && !checked.ok) { refuse(checked); return; }
    const r = await api("/api/context", { method: "PUT", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(values()) });
    if (!r.ok) {
      if (r.field && $(r.field)) { setMessage(r.field, r.message); $(r.field).focus(); }
      else showFormError(r.message);
      return;
    }
    showFormError("");
    showContext(r.data);
  });

  $("new-patient").addEventListener("click", async () => {
    const r = await api("/api/context", { method: "DELETE" });
    if (!r.ok) { showFormError(r.message); return; }
    clearForm();
    showContext(null);
    onCleared();
    $("patient_id").focus();
  });

  function showFormError(msg) { refused = false; $("form-error").textContent = msg; $("form-error").hidden = !msg; }

  /** Analyze (or Open patient) refused: name the fields, focus the first. */
  function refuse(checked) {
    const names = Object.keys(checked.errors || {});
    if (!names.length) { showFormError(checked.message || "The values could not be checked."); return; }
    showFormError("Nothing was analysed: check " + names.map(label).join(", ") + ".");
    refused = true;
    $(names[0]).focus();
  }

  async function load() {
    const r = await api("/api/context");
    if (r.ok && r.data && r.data.patient_id) { fill(r.data); showContext(r.data); }
  }

  return {
    check, formData, refuse, showFormError, load,
    fieldError(name, msg) { if ($(name + "-msg")) { setMessage(name, msg); $(name).focus(); return true; } return false; },
    side() { const el = document.querySelector("input[name=side]:checked"); return el ? el.value : ""; },
    get context() { return context; },
    get patientId() { return $("patient_id").value.trim(); },
  };
}
