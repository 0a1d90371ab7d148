// noa-edge live page: live view → Freeze (or an opened/dropped file) → a held frame on the daemon with its own
// proposed ROI → Analyze scores exactly that frame with exactly the ROI on screen. Vanilla JS, no CDN.
"use strict";
import { $, api, localTime } from "./common.js";
import { createPatientForm } from "./patient.js";
import { createResults } from "./results.js";
import { createRoiBox } from "./roi.js";

const view = $("view");
const state = { mode: "live", held: null, file: null, busy: false, liveUrl: null };
const TRIGGER_WORDS = { user: "frozen by you", upload: "opened from a file", freeze: "automatic freeze",
  folder: "from the watched folder", dicom: "received over DICOM" };

const roi = createRoiBox(view, $("roi"), $("roi-handle"), () => {
  const r = roi.roi;
  $("roi-text").textContent = r ? r.join(", ") : "–";
  $("roi-method").textContent = r ? (roi.method === "manual" ? "(moved by you)" : "(proposed for this image)") : "";
});
const form = createPatientForm({
  onCleared: () => results.clear(),
  onContext: (ctx) => { if (ctx) results.refreshSummary(ctx.patient_id); else $("patient-summary").hidden = true; },
});
const results = createResults({ isBusy: () => state.busy, openPatient: () => (form.context ? form.context.patient_id : null) });

function showImageMsg(msg) { $("image-msg").textContent = msg; $("image-msg").hidden = !msg; }

// ---------------------------------------------------------------- live view (JPEG snapshots, only while live)
async function pollLive() {
  if (state.mode === "live") {
    const r = await api("/live.jpg");
    if (state.mode === "live") {
      if (r.ok) {
        const blob = await r.response.blob();
        if (state.mode === "live") {
          const url = URL.createObjectURL(blob), old = state.liveUrl;
          state.liveUrl = url;
          view.src = url;
          if (old) URL.revokeObjectURL(old);
          view.alt = "live ultrasound frame";
          $("no-frame").hidden = true;
        }
      } else {
        $("no-frame").textContent = (r.offline ? "The daemon is not answering." : "No live frame: " + r.message + ".") +
          " Open or drop an image file (PNG, JPEG, DICOM) to analyse it.";
        $("no-frame").hidden = false;
      }
    }
  }
  setTimeout(pollLive, 250);
}

// ---------------------------------------------------------------- held frames
function hold(f) {
  state.mode = "held";
  state.held = f;
  view.src = "/frames/" + f.frame_id + ".png";
  view.alt = "held frame, " + (TRIGGER_WORDS[f.trigger] || f.trigger);
  $("no-frame").hidden = true;
  $("stage").dataset.frameId = f.frame_id;
  roi.set(f.frame_size, f.roi);     // this frame's own proposed ROI, never the previous box
  $("view-mode").textContent = "held frame";
  $("view-mode").className = "pill held";
  const which = f.n_frames > 1 ? " · frame " + (f.frame_index + 1) + " of " + f.n_frames : "";
  $("held-info").textContent = "Held " + localTime(f.held_at) + " · " + (TRIGGER_WORDS[f.trigger] || f.trigger) + which +
    ". Analyze scores exactly this frame.";
  $("go-live").disabled = false;
  $("auto-roi").disabled = false;
}

function goLive() {
  state.mode = "live"; state.held = null; state.file = null;
  delete $("stage").dataset.frameId;
  roi.clear();
  $("frame-chooser").hidden = true;
  $("file").value = "";
  $("view-mode").textContent = "live view";
  $("view-mode").className = "pill live-view";
  $("held-info").textContent = "";
  $("go-live").disabled = true;
  $("auto-roi").disabled = true;
  showImageMsg("");
}

async function freeze() {
  showImageMsg("");
  const r = await api("/api/freeze", { method: "POST" });
  if (!r.ok) { showImageMsg("Could not freeze: " + r.message); return false; }
  state.file = null;
  $("frame-chooser").hidden = true;
  hold(r.data);
  return true;
}

$("freeze").addEventListener("click", freeze);
$("go-live").addEventListener("click", goLive);
$("auto-roi").addEventListener("click", () => { if (state.held) roi.set(state.held.frame_size, state.held.roi); });

// ---------------------------------------------------------------- files: picker and drag-and-drop
async function openFile(file, frameIndex) {
  showImageMsg("");
  const fd = new FormData();
  fd.append("image", file, file.name);
  if (frameIndex !== undefined) fd.append("frame_index", String(frameIndex));
  $("held-info").textContent = "Reading " + file.name + "…";
  const r = await api("/api/frames", { method: "POST", body: fd });
  if (!r.ok) {
    $("held-info").textContent = "";
    showImageMsg(file.name + ": " + r.message);
    return;
  }
  state.file = file;
  hold(r.data);
  const n = r.data.n_frames || 1, chooser = $("frame-index");
  $("frame-chooser").hidden = n < 2;
  if (n > 1) {
    if (chooser.options.length !== n || chooser.dataset.file !== file.name) {
      chooser.replaceChildren(...Array.from({ length: n }, (_, i) => new Option(String(i + 1), String(i))));
      chooser.dataset.file = file.name;
    }
    chooser.value = String(r.data.frame_index);
    $("frame-count").textContent = "of " + n;
  }
}

$("file").addEventListener("change", () => { const f = $("file").files[0]; if (f) openFile(f); });
$("frame-index").addEventListener("change", () => { if (state.file) openFile(state.file, Number($("frame-index").value)); });

const stage = $("stage");
const showDrop = (on) => { $("drop-hint").hidden = !on; stage.classList.toggle("dropping", on); };
stage.addEventListener("dragenter", (ev) => { ev.preventDefault(); showDrop(true); });
stage.addEventListener("dragover", (ev) => { ev.preventDefault(); ev.dataTransfer.dropEffect = "copy"; showDrop(true); });
stage.addEventListener("dragleave", (ev) => { if (!stage.contains(ev.relatedTarget)) showDrop(false); });
stage.addEventListener("drop", (ev) => {
  ev.preventDefault();
  showDrop(false);
  const f = ev.dataTransfer && ev.dataTransfer.files[0];
  if (f) openFile(f); else showImageMsg("Nothing to open: drop an image file (PNG, JPEG or DICOM).");
});

// ---------------------------------------------------------------- Analyze: exactly the held frame and the ROI on screen
function setBusy(on) {
  state.busy = on;
  $("analyze").disabled = on;
  $("analyze").textContent = on ? "Analyzing…" : "Analyze";
}

$("analyze-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  if (state.busy) return;
  setBusy(true);
  try {
    const checked = await form.check(true);
    if (!checked || !checked.ok) { form.refuse(checked || {}); return; }
    form.showFormError("");
    if (state.mode !== "held" && !(await freeze())) return;   // Analyze on the live view freezes first
    const fd = form.formData();
    fd.append("frame_id", state.held.frame_id);
    if (roi.roi) fd.append("roi", roi.roi.join(","));
    fd.append("roi_method", roi.method);
    if (form.side()) fd.append("side", form.side());
    const r = await api("/api/analyze", { method: "POST", body: fd });
    if (!r.ok) {
      if (r.field === "frame_id") form.showFormError(r.message + " Freeze again or open the file again.");
      else if (r.field && form.fieldError(r.field, r.message)) form.showFormError("Nothing was analysed: " + r.message);
      else form.showFormError(r.message);
      return;
    }
    results.markOwn(r.data.id);
    await results.show(r.data, { focus: true });
  } finally {
    setBusy(false);
  }
});

document.addEventListener("noa:health", (ev) => {
  if (ev.detail) $("source-name").textContent = ev.detail.source.source || "no live source: open or drop an image";
});

form.load();
results.poll();
pollLive();
