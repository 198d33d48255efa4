// The case view's scan viewer (medres.review.viewer): zoom, pan, invert and the pixel value
// under the pointer, in the browser, on pixels sent inline over the app's websocket.
// Hand-written: no well-kept Streamlit viewer draws inline pixels with a per-pixel readout.
//
// data (from viewer.payload): image / overlay (PNG as base64), shape [rows, cols],
// mm [row step, col step], size (px on the longer side at zoom 1), values {dtype, base64,
// channels}, unit, origin / per_row / per_col (the stored index of a picture pixel), label,
// presets (names, keys 1..9), overlay_ready, slices (PageUp / PageDown move them), notice.

const views = new WeakMap(); // one view per mounted viewer, kept across reruns
const ZOOM_STEP = 1.25;
const MIN_ZOOM = 0.5;
const MAX_ZOOM = 32;
const HINT = "Point at the picture for its value, click to keep it; wheel zooms, drag pans.";

export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  let view = views.get(parentElement);
  if (!view) {
    view = mount(parentElement);
    views.set(parentElement, view);
  }
  view.trigger = setTriggerValue;
  view.show(data);
  return view.cleanup;
}

function keys(data) {
  // the keys this picture answers to, in words
  const n = data.presets.length;
  const said = [n > 1 ? `1–${n} window presets` : n ? "1 window preset" : null];
  if (data.overlay_ready) said.push("O overlay");
  said.push("I invert", "+/− zoom", "0 fit");
  if (data.slices) said.push("PgUp/PgDn slice");
  return `Keys: ${said.filter(Boolean).join(" · ")}`;
}

function mount(root) {
  // root: the component's shadow root; box: the viewer's element in it
  const q = (name) => root.querySelector(`[data-part="${name}"]`);
  const box = root.querySelector(".medres-viewer");
  const canvas = q("canvas");
  const view = { data: null, zoom: 1, panX: 0, panY: 0, inverted: false, fit: 1, layers: null };

  function decode(values) {
    const bytes = Uint8Array.from(atob(values.base64), (ch) => ch.charCodeAt(0));
    return values.dtype === "int16" ? new Int16Array(bytes.buffer) : new Float32Array(bytes.buffer);
  }

  function picture(base64) {
    return new Promise((resolve) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.src = `data:image/png;base64,${base64}`;
    });
  }

  function inverse(img) {
    // an inverted copy of the scan layer (drawn instead of it: the overlay stays as it is)
    const copy = document.createElement("canvas");
    copy.width = img.width;
    copy.height = img.height;
    const ctx = copy.getContext("2d");
    ctx.drawImage(img, 0, 0);
    const pixels = ctx.getImageData(0, 0, copy.width, copy.height);
    for (let i = 0; i < pixels.data.length; i += 4) {
      for (let c = 0; c < 3; c++) pixels.data[i + c] = 255 - pixels.data[i + c];
    }
    ctx.putImageData(pixels, 0, 0);
    return copy;
  }

  function size() {
    // canvas size in CSS px at zoom 1: true proportions, longer side data.size, never wider
    // than the column
    const d = view.data;
    const heightMm = d.shape[0] * d.mm[0];
    const widthMm = d.shape[1] * d.mm[1];
    const room = box.clientWidth || d.size;
    view.fit = Math.min(d.size / Math.max(heightMm, widthMm), room / widthMm); // px per mm
    return [Math.round(widthMm * view.fit), Math.round(heightMm * view.fit)];
  }

  function draw() {
    if (!view.layers) return;
    const [width, height] = size();
    const ratio = window.devicePixelRatio || 1;
    canvas.style.width = `${width}px`;
    canvas.style.height = `${height}px`;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.fillStyle = "black";
    ctx.fillRect(0, 0, width, height);
    const d = view.data;
    const scale = view.fit * view.zoom;
    ctx.imageSmoothingEnabled = scale * Math.min(...d.mm) < 8; // big pixels shown as they are
    const [w, h] = [d.shape[1] * d.mm[1] * scale, d.shape[0] * d.mm[0] * scale];
    const base = view.inverted ? view.layers.inverted : view.layers.image;
    ctx.drawImage(base, view.panX, view.panY, w, h);
    if (view.layers.overlay) ctx.drawImage(view.layers.overlay, view.panX, view.panY, w, h);
    q("zoom").textContent = `${Math.round(view.zoom * 100)}%`;
    q("invert").setAttribute("aria-pressed", String(view.inverted));
  }

  function pixelAt(event) {
    // [row, col] of the matrix pixel under the pointer, or null outside the picture
    const d = view.data;
    const box = canvas.getBoundingClientRect();
    const scale = view.fit * view.zoom;
    const row = Math.floor((event.clientY - box.top - view.panY) / (scale * d.mm[0]));
    const col = Math.floor((event.clientX - box.left - view.panX) / (scale * d.mm[1]));
    const inside = row >= 0 && col >= 0 && row < d.shape[0] && col < d.shape[1];
    return inside ? [row, col] : null;
  }

  function describe(pixel) {
    const d = view.data;
    const [row, col] = pixel;
    const at = (row * d.shape[1] + col) * d.values.channels;
    const numbers = Array.from(view.values.slice(at, at + d.values.channels), (v) =>
      Number.isInteger(v) ? String(v) : v.toPrecision(4),
    );
    const index = d.origin.map((o, i) => o + row * d.per_row[i] + col * d.per_col[i]);
    const where = index.length === 2 ? `row ${index[0]}, col ${index[1]}` : `voxel [${index.join(", ")}]`;
    return `${where}: ${numbers.join(", ")} ${d.unit}`;
  }

  function zoomAt(factor, x, y) {
    const zoom = Math.min(MAX_ZOOM, Math.max(MIN_ZOOM, view.zoom * factor));
    view.panX = x - ((x - view.panX) * zoom) / view.zoom; // the point under x, y stays put
    view.panY = y - ((y - view.panY) * zoom) / view.zoom;
    view.zoom = zoom;
    draw();
  }

  function zoomCentre(factor) {
    zoomAt(factor, canvas.clientWidth / 2, canvas.clientHeight / 2);
  }

  function reset() {
    Object.assign(view, { zoom: 1, panX: 0, panY: 0 });
    draw();
  }

  function invert() {
    view.inverted = !view.inverted;
    draw();
  }

  let drag = null;
  canvas.addEventListener("pointerdown", (event) => {
    drag = { x: event.clientX, y: event.clientY, panX: view.panX, panY: view.panY, moved: false };
    canvas.setPointerCapture(event.pointerId);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (drag) {
      const dx = event.clientX - drag.x;
      const dy = event.clientY - drag.y;
      drag.moved ||= Math.hypot(dx, dy) > 3;
      if (drag.moved) {
        view.panX = drag.panX + dx;
        view.panY = drag.panY + dy;
        draw();
      }
    }
    const pixel = pixelAt(event);
    q("readout").textContent = pixel ? describe(pixel) : HINT;
  });
  canvas.addEventListener("pointerup", (event) => {
    const pixel = pixelAt(event);
    if (drag && !drag.moved && pixel) q("pinned").textContent = `Clicked: ${describe(pixel)}`;
    drag = null;
  });
  canvas.addEventListener("pointerleave", () => (q("readout").textContent = HINT));
  canvas.addEventListener(
    "wheel",
    (event) => {
      event.preventDefault();
      const box = canvas.getBoundingClientRect();
      const factor = ZOOM_STEP ** (-Math.sign(event.deltaY));
      zoomAt(factor, event.clientX - box.left, event.clientY - box.top);
    },
    { passive: false },
  );
  q("zoom-in").addEventListener("click", () => zoomCentre(ZOOM_STEP));
  q("zoom-out").addEventListener("click", () => zoomCentre(1 / ZOOM_STEP));
  q("reset").addEventListener("click", reset);
  q("invert").addEventListener("click", invert);

  function onKey(event) {
    // the viewer's keys anywhere on the page, except while typing or with a modifier
    const target = event.composedPath()[0];
    const typing = target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName);
    if (typing || event.ctrlKey || event.metaKey || event.altKey || !canvas.getClientRects().length) return;
    const key = event.key.toLowerCase();
    const preset = view.data.presets[Number(key) - 1];
    const actions = {
      "+": () => zoomCentre(ZOOM_STEP),
      "=": () => zoomCentre(ZOOM_STEP),
      "-": () => zoomCentre(1 / ZOOM_STEP),
      0: reset,
      i: invert,
      o: () => view.data.overlay_ready && view.trigger("overlay", Date.now()),
      pageup: () => view.data.slices && view.trigger("slice", { step: -1, at: Date.now() }),
      pagedown: () => view.data.slices && view.trigger("slice", { step: 1, at: Date.now() }),
    };
    if (actions[key]) actions[key]();
    else if (/^[1-9]$/.test(key) && preset) view.trigger("preset", preset);
    else return;
    event.preventDefault();
  }
  document.addEventListener("keydown", onKey);
  const resized = new ResizeObserver(() => draw());
  resized.observe(box);

  view.cleanup = () => {
    document.removeEventListener("keydown", onKey);
    resized.disconnect();
    views.delete(root);
  };

  view.show = async (data) => {
    const previous = view.data;
    view.data = data;
    canvas.setAttribute("aria-label", data.label);
    q("readout").textContent = HINT;
    q("notice").textContent = data.notice || "";
    q("keys").textContent = keys(data);
    if (previous && previous.values.base64 !== data.values.base64) q("pinned").textContent = "";
    view.values = decode(data.values);
    const [image, overlay] = await Promise.all([
      picture(data.image),
      data.overlay ? picture(data.overlay) : null,
    ]);
    if (view.data !== data) return; // a newer picture arrived meanwhile
    view.layers = { image, overlay, inverted: inverse(image) };
    draw();
    box.dataset.ready = "true"; // the picture is drawn (tests wait on it)
  };
  return view;
}
