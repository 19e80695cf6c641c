/* Latent sliders that decode in the browser: a Streamlit components-v1 frontend, no build step.
 *
 * Python (app/components/latent_sliders/__init__.py) sends the run's decoder as ONNX bytes, the slider specs
 * and a starting point z. While a thumb is dragged, every input event asks for a decode with onnxruntime-web
 * (WASM backend, vendored beside this file); at most one decode is pending at a time, so intermediate thumb
 * positions are dropped and the last one is always drawn. On release (the range input's "change") the final
 * z goes back to Python with setComponentValue({z, run_key, seq}).
 *
 * Sessions are cached by run key, so reruns never re-create them; every report lists the run keys held
 * (`loaded`), and Python stops sending a run's bytes once they are listed (when they are missing, as after the
 * frame was re-created, the component asks with {need: run_key}). z from Python is applied only when its
 * token changes (a new origin), never merely because Python echoes the reported z.
 * With `hidden` the component is a probe: it loads the decoder, shows nothing and reports {ready: run_key}, so the
 * page can keep its server-side sliders until the browser has shown it can decode.
 * For tests and benchmarks the canvas counts drawn frames in data-frames (and names the run of the last one in
 * data-run-key), and window.latentSliders keeps each frame's time and its lag behind the thumb event it shows.
 */
"use strict";

// ------------------------------------------------------------------ the Streamlit protocol (components v1)
const API_VERSION = 1;
function sendToStreamlit(type, data) {
  window.parent.postMessage({ isStreamlitMessage: true, type, ...data }, "*");
}
const setFrameHeight = (height) => sendToStreamlit("streamlit:setFrameHeight", { height });
const setComponentValue = (value) => sendToStreamlit("streamlit:setComponentValue", { value, dataType: "json" });

// ------------------------------------------------------------------ onnxruntime-web, from this folder only
const ORT_DIR = new URL("vendor/onnxruntime-web/", document.baseURI).href;
ort.env.wasm.wasmPaths = ORT_DIR;
ort.env.wasm.numThreads = 1; // no SharedArrayBuffer, so no cross-origin isolation needed
ort.env.wasm.proxy = false;
ort.env.logLevel = "error";

const MAX_SESSIONS = 4; // runs whose sessions are kept (switching back is instant)
const MAX_TIMES = 2000; // frame records kept for benchmarks
const STRIP_SIDE_MIN = 12; // px of one traversal-strip image at least
const REPORT_DIGITS = 1e6;
const DIGIT_SHARE = 0.42; // of a narrow frame's width, for the image beside the sliders
const DIGIT_MIN_PX = 96;

const sessions = new Map(); // run key -> Promise<InferenceSession>, least recently used first

function toBytes(model) {
  if (model == null) return null;
  if (typeof model === "string") { // base64
    const bin = atob(model);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  return new Uint8Array(model); // a copy: the received view may share a buffer with the whole message
}

function sessionFor(runKey, model) {
  if (sessions.has(runKey)) {
    const p = sessions.get(runKey);
    sessions.delete(runKey);
    sessions.set(runKey, p);
    return p;
  }
  const bytes = toBytes(model);
  if (!bytes || !bytes.length) return null;
  const t0 = performance.now();
  const p = ort.InferenceSession.create(bytes, { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
  p.then(() => { stats.sessionMs[runKey] = performance.now() - t0; }, () => {});
  sessions.set(runKey, p);
  p.catch(() => sessions.delete(runKey));
  while (sessions.size > MAX_SESSIONS) {
    const [oldKey, old] = sessions.entries().next().value;
    sessions.delete(oldKey);
    old.then((s) => s.release()).catch(() => {});
  }
  return p;
}

// ------------------------------------------------------------------ state
const el = {
  root: document.getElementById("root"),
  figure: document.querySelector("figure.digit"),
  canvas: document.getElementById("digit"),
  strip: document.getElementById("strip"),
  caption: document.getElementById("caption"),
  status: document.getElementById("status"),
  sliders: document.getElementById("sliders"),
};
const S = {
  args: null,
  runKey: null,
  zToken: null,
  specsJson: null,
  z: null, // Float32Array (D,)
  shape: [1, 28, 28],
  session: null,
  loading: null, // the promise of the session being created
  asked: null, // the run key whose bytes we asked for
  inputName: "z",
  outputName: "image",
  pending: null, // {z, t, runKey}: the one decode waiting to run
  busy: false,
  stripWanted: false,
  activeDim: null,
  seq: 0,
  disabled: false,
};
const stats = { frames: 0, times: [], lags: [], decodeMs: [], errors: 0, sessionMs: {} };
window.latentSliders = stats;

function showStatus(text, isError = false) {
  el.status.textContent = text;
  el.status.classList.toggle("error", isError);
}

// ------------------------------------------------------------------ drawing
function toRGBA(data, offset, shape, image) {
  const [c, h, w] = shape;
  const plane = h * w;
  const px = image.data;
  for (let i = 0; i < plane; i++) {
    const r = data[offset + i];
    const g = c === 3 ? data[offset + plane + i] : r;
    const b = c === 3 ? data[offset + 2 * plane + i] : r;
    px[4 * i] = Math.round(Math.min(Math.max(r, 0), 1) * 255);
    px[4 * i + 1] = Math.round(Math.min(Math.max(g, 0), 1) * 255);
    px[4 * i + 2] = Math.round(Math.min(Math.max(b, 0), 1) * 255);
    px[4 * i + 3] = 255;
  }
  return image;
}

function drawDigit(data) {
  const [, h, w] = S.shape;
  const ctx = el.canvas.getContext("2d");
  ctx.putImageData(toRGBA(data, 0, S.shape, ctx.createImageData(w, h)), 0, 0);
}

function drawStrip(data, n, here) {
  const [c, h, w] = S.shape;
  const canvases = el.strip.querySelectorAll("canvas");
  for (let i = 0; i < n && i < canvases.length; i++) {
    const ctx = canvases[i].getContext("2d");
    ctx.putImageData(toRGBA(data, i * c * h * w, S.shape, ctx.createImageData(w, h)), 0, 0);
    canvases[i].classList.toggle("here", i === here);
  }
}

// ------------------------------------------------------------------ decoding: one pending job, latest wins
function requestDecode(t = performance.now()) {
  if (!S.z) return;
  S.pending = { z: Float32Array.from(S.z), t, runKey: S.runKey };
  if (!S.busy) pump();
}

async function runDecoder(session, z, batch) {
  const d = z.length / batch;
  const feeds = { [S.inputName]: new ort.Tensor("float32", z, [batch, d]) };
  const out = await session.run(feeds);
  const image = out[S.outputName];
  const data = image.data;
  if (image.dispose) image.dispose();
  return data;
}

async function pump() {
  S.busy = true;
  try {
    while (S.session && (S.pending || S.stripWanted)) {
      const session = S.session;
      if (S.pending) {
        const job = S.pending;
        S.pending = null;
        if (job.runKey !== S.runKey) continue;
        const t0 = performance.now();
        const data = await runDecoder(session, job.z, 1);
        if (session !== S.session || job.runKey !== S.runKey) continue; // the run changed meanwhile
        drawDigit(data);
        const now = performance.now();
        stats.frames += 1;
        el.canvas.dataset.frames = String(stats.frames);
        el.canvas.dataset.runKey = job.runKey;
        el.canvas.dataset.lastLagMs = (now - job.t).toFixed(1);
        stats.times.push(now);
        stats.lags.push(now - job.t);
        stats.decodeMs.push(now - t0);
        if (stats.times.length > MAX_TIMES) { stats.times.shift(); stats.lags.shift(); stats.decodeMs.shift(); }
      } else {
        S.stripWanted = false; // the strip fills idle time only: a new thumb position goes first
        await decodeStrip(session);
      }
    }
  } catch (e) {
    stats.errors += 1;
    showStatus(`Decoding in the browser failed: ${e && e.message ? e.message : e}`, true);
  } finally {
    S.busy = false;
  }
}

function stripCount() {
  const n = Number(S.args && S.args.strip) || 0;
  return S.activeDim == null ? 0 : Math.max(0, Math.floor(n));
}

async function decodeStrip(session) {
  const n = stripCount();
  if (n < 2 || !S.z) return;
  const spec = S.args.sliders.find((s) => s.dim === S.activeDim);
  if (!spec) return;
  const d = S.z.length;
  const batch = new Float32Array(n * d);
  let here = 0;
  let best = Infinity;
  for (let i = 0; i < n; i++) {
    const v = spec.min + ((spec.max - spec.min) * i) / (n - 1);
    batch.set(S.z, i * d);
    batch[i * d + spec.dim] = v;
    if (Math.abs(v - S.z[spec.dim]) < best) { best = Math.abs(v - S.z[spec.dim]); here = i; }
  }
  const runKey = S.runKey;
  const data = await runDecoder(session, batch, n);
  if (session === S.session && runKey === S.runKey) {
    buildStrip(n);
    drawStrip(data, n, here);
  }
}

function buildStrip(n) {
  const [, h, w] = S.shape;
  if (el.strip.childElementCount !== n) {
    el.strip.replaceChildren();
    const side = Math.max(STRIP_SIDE_MIN, Math.floor(((parseFloat(el.figure.style.width) || Number(S.args.side)) - 2 * (n - 1)) / n));
    for (let i = 0; i < n; i++) {
      const c = document.createElement("canvas");
      c.width = w;
      c.height = h;
      c.style.width = `${side}px`;
      c.style.height = `${Math.round((side * h) / w)}px`;
      el.strip.appendChild(c);
    }
  }
  if (el.strip.hidden) { el.strip.hidden = false; fitFrame(); }
}

// ------------------------------------------------------------------ the sliders
function formatValue(v, step) {
  const digits = Math.max(0, Math.min(6, Math.ceil(-Math.log10(step || 0.01))));
  return Number(v).toFixed(digits);
}

function report() {
  S.seq += 1;
  const z = Array.from(S.z, (v) => Math.round(v * REPORT_DIGITS) / REPORT_DIGITS);
  setComponentValue({ z, loaded: loadedKeys(), run_key: S.runKey, seq: S.seq });
}

function buildSliders(args) {
  el.sliders.replaceChildren();
  if (args.heading) {
    const head = document.createElement("div");
    head.className = "head";
    head.textContent = args.heading;
    el.sliders.appendChild(head);
  }
  for (const spec of args.sliders) {
    const row = document.createElement("div");
    row.className = "row" + (spec.inactive ? " inactive" : "");
    row.dataset.dim = String(spec.dim);
    if (spec.help) row.title = spec.help;
    const label = document.createElement("label");
    label.textContent = spec.label;
    label.htmlFor = `z${spec.dim}`;
    const output = document.createElement("output");
    const input = document.createElement("input");
    input.type = "range";
    input.id = `z${spec.dim}`;
    input.min = String(spec.min);
    input.max = String(spec.max);
    input.step = String(spec.step);
    input.setAttribute("aria-label", `z${spec.dim}`);
    input.addEventListener("input", (ev) => {
      S.z[spec.dim] = Number(input.value);
      output.textContent = formatValue(input.value, spec.step);
      setActiveDim(spec.dim);
      requestDecode(ev.timeStamp || performance.now());
    });
    input.addEventListener("change", () => {
      S.z[spec.dim] = Number(input.value);
      report();
    });
    row.append(label, output, input);
    el.sliders.appendChild(row);
  }
}

function setActiveDim(dim) {
  if (S.activeDim !== dim) {
    for (const row of el.sliders.querySelectorAll(".row")) row.classList.toggle("active-dim", Number(row.dataset.dim) === dim);
    S.activeDim = dim;
  }
  if (stripCount() >= 2) S.stripWanted = true;
}

function showZ() {
  for (const spec of S.args.sliders) {
    const input = document.getElementById(`z${spec.dim}`);
    if (!input) continue;
    input.value = String(S.z[spec.dim]);
    const output = input.parentElement.querySelector("output");
    output.textContent = formatValue(S.z[spec.dim], spec.step);
  }
}

function applyTheme(theme) {
  if (!theme) return;
  const root = document.documentElement.style;
  if (theme.primaryColor) root.setProperty("--primary", theme.primaryColor);
  if (theme.textColor) { root.setProperty("--text", theme.textColor); root.setProperty("--muted", `color-mix(in srgb, ${theme.textColor} 60%, transparent)`); }
  if (theme.backgroundColor) root.setProperty("--background", theme.backgroundColor);
  if (theme.secondaryBackgroundColor) root.setProperty("--secondary", theme.secondaryBackgroundColor);
  if (theme.font) root.setProperty("--font", theme.font);
}

// The image is args.side px wide at most, and leaves the sliders most of a narrow frame.
function sizeDigit() {
  if (!S.args) return;
  const [, h, w] = S.shape;
  const room = el.root.clientWidth || S.args.side;
  const side = S.args.layout === "column" ? Math.min(S.args.side, room) : Math.min(S.args.side, Math.max(DIGIT_MIN_PX, Math.floor(room * DIGIT_SHARE)));
  if (el.figure.style.width !== `${side}px`) {
    el.figure.style.width = `${side}px`; // the caption wraps under the image
    el.canvas.style.width = `${side}px`;
    el.canvas.style.height = `${Math.round((side * h) / w)}px`;
  }
}

let lastHeight = -1;
function fitFrame() {
  const h = S.args && S.args.hidden ? 0 : Math.ceil(el.root.getBoundingClientRect().height) + 4;
  if (h !== lastHeight) { lastHeight = h; setFrameHeight(h); }
}

// ------------------------------------------------------------------ the session of the current run
function loadedKeys() {
  return Array.from(sessions.keys());
}

function loadSession(args) {
  const runKey = args.run_key;
  const p = sessionFor(runKey, args.model);
  if (!p) { // Python sends the bytes only while we have not said we hold them: ask (once per run key)
    showStatus("Loading the decoder…");
    if (S.asked !== runKey) {
      S.asked = runKey;
      setComponentValue({ need: runKey, loaded: loadedKeys(), run_key: runKey, seq: ++S.seq });
    }
    return;
  }
  S.asked = null;
  S.loading = p;
  showStatus("Loading the decoder…");
  p.then((session) => {
    if (S.loading !== p) return;
    S.loading = null;
    S.session = session;
    showStatus(S.args.status || "");
    if (S.args.hidden) setComponentValue({ ready: runKey, loaded: loadedKeys(), run_key: runKey, seq: ++S.seq });
    requestDecode();
  }).catch((e) => {
    if (S.loading !== p) return;
    S.loading = null;
    const why = String(e && e.message ? e.message : e);
    showStatus(`The decoder could not be loaded in the browser: ${why}`, true);
    setComponentValue({ error: why, loaded: loadedKeys(), run_key: runKey, seq: ++S.seq });
  });
}

// ------------------------------------------------------------------ render: args from Python
function onRender(args, disabled, theme) {
  if (stats.firstRenderMs === undefined) stats.firstRenderMs = performance.now();
  applyTheme(theme);
  S.args = args;
  const shape = args.image_shape;
  S.inputName = args.input_name || "z";
  S.outputName = args.output_name || "image";
  el.root.classList.toggle("column", args.layout === "column");
  el.root.hidden = !!args.hidden; // a probe: load the decoder and say so ({ready}), show nothing
  el.sliders.style.maxHeight = args.max_height ? `${args.max_height}px` : "";
  el.caption.textContent = args.caption || "";


  const runChanged = args.run_key !== S.runKey;
  if (runChanged || String(shape) !== String(S.shape)) {
    S.shape = shape;
    el.canvas.width = shape[2];
    el.canvas.height = shape[1];
    el.strip.replaceChildren();
    el.strip.hidden = true;
  }
  sizeDigit();
  const specsJson = JSON.stringify(args.sliders);
  if (runChanged || specsJson !== S.specsJson) {
    S.specsJson = specsJson;
    buildSliders(args);
  }
  const zChanged = runChanged || args.z_token !== S.zToken;
  if (zChanged) { // a new origin from Python (not the echo of our own report)
    S.zToken = args.z_token;
    S.z = Float32Array.from(args.z);
    S.activeDim = null;
    S.pending = null;
  }
  showZ();
  S.disabled = !!disabled;
  for (const input of el.sliders.querySelectorAll("input")) input.disabled = S.disabled;

  if (runChanged) {
    S.runKey = args.run_key;
    S.session = null;
    S.loading = null;
  }
  if (!S.session && !S.loading) {
    loadSession(args);
  } else if (zChanged && S.session) {
    requestDecode();
  }
  fitFrame();
}

window.addEventListener("message", (event) => {
  const msg = event.data;
  if (event.source !== window.parent || !msg || msg.type !== "streamlit:render") return;
  onRender(msg.args || {}, msg.disabled, msg.theme);
});
new ResizeObserver(() => { sizeDigit(); fitFrame(); }).observe(el.root);
sendToStreamlit("streamlit:componentReady", { apiVersion: API_VERSION });
