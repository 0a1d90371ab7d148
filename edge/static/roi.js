// The ROI box on the held frame, in that frame's pixel coordinates. Mouse: drag to move, drag the corner to
// resize. Keyboard (the box is focusable): arrows move, Shift+arrows resize. Any user change makes it "manual".
"use strict";

const STEP = 4;      // frame pixels per key press
const MIN_SIDE = 16;

export function createRoiBox(img, box, handle, onChange) {
  let frame = null;        // [w, h] of the frame the box belongs to
  let roi = null;          // [x, y, w, h]
  let manual = false;

  const scale = () => (img.clientWidth && frame ? img.clientWidth / frame[0] : 1);

  function clamp(r) {
    let [x, y, w, h] = r.map(Math.round);
    w = Math.max(MIN_SIDE, Math.min(w, frame[0])); h = Math.max(MIN_SIDE, Math.min(h, frame[1]));
    x = Math.max(0, Math.min(x, frame[0] - w)); y = Math.max(0, Math.min(y, frame[1] - h));
    return [x, y, w, h];
  }

  function draw() {
    if (!roi) { box.hidden = true; return; }
    const s = scale(), [x, y, w, h] = roi;
    box.hidden = false;
    box.style.left = (x * s) + "px"; box.style.top = (y * s) + "px";
    box.style.width = (w * s) + "px"; box.style.height = (h * s) + "px";
    box.setAttribute("aria-label", "Region of interest " + (manual ? "(moved by you)" : "(proposed)") + ": x " + x +
      ", y " + y + ", " + w + " by " + h + " pixels. Arrow keys move it, Shift with arrow keys resizes it.");
  }

  function update(r) {
    roi = clamp(r); manual = true; draw(); onChange();
  }

  // ------------------------------------------------------------------ mouse / touch
  let drag = null;
  function start(ev, mode) {
    if (!roi) return;
    ev.preventDefault(); ev.stopPropagation();
    box.focus({ preventScroll: true });
    drag = { mode, x0: ev.clientX, y0: ev.clientY, roi0: roi.slice() };
    window.addEventListener("pointermove", move);
    window.addEventListener("pointerup", end, { once: true });
  }
  function move(ev) {
    if (!drag) return;
    const s = scale(), dx = (ev.clientX - drag.x0) / s, dy = (ev.clientY - drag.y0) / s;
    const [x, y, w, h] = drag.roi0;
    update(drag.mode === "move" ? [x + dx, y + dy, w, h] : [x, y, w + dx, h + dy]);
  }
  function end() { drag = null; window.removeEventListener("pointermove", move); }
  box.addEventListener("pointerdown", (ev) => start(ev, "move"));
  handle.addEventListener("pointerdown", (ev) => start(ev, "resize"));

  // ------------------------------------------------------------------ keyboard
  const KEYS = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
  box.addEventListener("keydown", (ev) => {
    const k = KEYS[ev.key];
    if (!k || !roi) return;
    ev.preventDefault();
    const [x, y, w, h] = roi, dx = k[0] * STEP, dy = k[1] * STEP;
    update(ev.shiftKey ? [x, y, w + dx, h + dy] : [x + dx, y + dy, w, h]);
  });

  window.addEventListener("resize", draw);
  img.addEventListener("load", draw);

  return {
    /** A new image: its own proposed box, never the previous one. */
    set(frameSize, proposed) { frame = frameSize.slice(); roi = proposed ? clamp(proposed) : null; manual = false; draw(); onChange(); },
    clear() { frame = null; roi = null; manual = false; draw(); onChange(); },
    get roi() { return roi ? roi.slice() : null; },
    get method() { return manual ? "manual" : "auto"; },
    redraw: draw,
  };
}
