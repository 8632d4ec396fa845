// The qd-demo page: a drawing pad, live top-3 guesses from the exported ONNX model.
//
// Flow: fetch model.canvas.onnx (qd-export's onnx-canvas format) -> labels and open-set
// rule from its metadata_props -> onnxruntime-web session (WebAssembly, single thread).
// Each time the drawing changes, the pad's grey levels go into the model as they are:
// the preprocessing (crop to the ink, Google's framing, line width, 28x28 resize) runs
// inside the graph, which also returns the 28x28 bitmap it classified (shown beside the
// pad). One inference runs at a time, and the latest drawing is always the one
// classified next. When the rule (openset.js, as qd-infer applies it) says the drawing
// is none of the known things, the page asks instead of guessing.

import * as ort from "./ort/ort.wasm.min.mjs";
import { readMetadataProps } from "./onnx-metadata.js";
import { isUnknown, parseOpenSet } from "./openset.js";

// The canvas model's contract (qd.data.contract, docs/canvas.md).
const MODEL_URL = "model.canvas.onnx";
const MODEL_FORMAT = "qd-onnx-v1";
const CANVAS_INPUT = "canvas";
const CANVAS_OUTPUTS = ["probabilities", "logits", "bitmap"];
const CANVAS_KEY = "qd.canvas";
const TOP_K = 3;
const GUESSES_TITLE = "Top guesses";
const NOT_SURE = "Not sure — is it one of these?";
const INK = "#000000";
const PAPER = "#ffffff";
// Quick, Draw! strokes are 16 units wide in a 256-unit frame; a doodle filling most of
// this 512-pixel pad gets about the same proportions.
const LINE_WIDTH_FRACTION = 0.03;

const pad = document.getElementById("pad");
const ctx = pad.getContext("2d", { willReadFrequently: true });
const modelView = document.getElementById("model-view");
const modelViewCtx = modelView.getContext("2d");
const undoButton = document.getElementById("undo");
const clearButton = document.getElementById("clear");
const statusLine = document.getElementById("status");
const guessRows = [...document.querySelectorAll("#top3 .guess")];
const guessesTitle = document.getElementById("guesses-title");
const classList = document.getElementById("classes");

const strokes = []; // finished and in-progress strokes: arrays of [x, y] in pad pixels
const activeStrokes = new Map(); // pointerId -> stroke being drawn

let model = null; // { session, labels, openSet, meta }
let busy = false;
let dirty = false;
let frameRequested = false;
let lastResult = null;
let lastPointerType = null;

// ---------------------------------------------------------------- drawing

function lineWidth() {
  return Math.max(2, Math.round(pad.width * LINE_WIDTH_FRACTION));
}

function render() {
  ctx.save();
  ctx.fillStyle = PAPER;
  ctx.fillRect(0, 0, pad.width, pad.height);
  ctx.strokeStyle = INK;
  ctx.fillStyle = INK;
  ctx.lineWidth = lineWidth();
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  for (const stroke of strokes) {
    if (stroke.length === 1) {
      ctx.beginPath();
      ctx.arc(stroke[0][0], stroke[0][1], ctx.lineWidth / 2, 0, 2 * Math.PI);
      ctx.fill();
      continue;
    }
    ctx.beginPath();
    ctx.moveTo(stroke[0][0], stroke[0][1]);
    for (let i = 1; i < stroke.length; i++) ctx.lineTo(stroke[i][0], stroke[i][1]);
    ctx.stroke();
  }
  ctx.restore();
}

function drawingChanged() {
  const hasInk = strokes.length > 0;
  document.body.classList.toggle("has-ink", hasInk);
  undoButton.disabled = !hasInk;
  clearButton.disabled = !hasInk;
  if (frameRequested) return;
  frameRequested = true;
  requestAnimationFrame(() => {
    frameRequested = false;
    render();
    requestClassification();
  });
}

function padPoint(event) {
  const rect = pad.getBoundingClientRect();
  return [
    ((event.clientX - rect.left) * pad.width) / rect.width,
    ((event.clientY - rect.top) * pad.height) / rect.height,
  ];
}

pad.addEventListener("pointerdown", (event) => {
  if (event.button !== 0 && event.pointerType === "mouse") return;
  event.preventDefault();
  lastPointerType = event.pointerType;
  pad.setPointerCapture(event.pointerId);
  const stroke = [padPoint(event)];
  strokes.push(stroke);
  activeStrokes.set(event.pointerId, stroke);
  drawingChanged();
});

pad.addEventListener("pointermove", (event) => {
  const stroke = activeStrokes.get(event.pointerId);
  if (!stroke) return;
  event.preventDefault();
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
  for (const e of events.length ? events : [event]) stroke.push(padPoint(e));
  drawingChanged();
});

function endStroke(event) {
  if (activeStrokes.delete(event.pointerId)) drawingChanged();
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

function clearDrawing() {
  strokes.length = 0;
  activeStrokes.clear();
  drawingChanged();
}

clearButton.addEventListener("click", clearDrawing);
undoButton.addEventListener("click", () => {
  strokes.pop();
  activeStrokes.clear();
  drawingChanged();
});
document.addEventListener("keydown", (event) => {
  if ((event.ctrlKey || event.metaKey) && event.key === "z") {
    undoButton.click();
    event.preventDefault();
  }
});

// ---------------------------------------------------------------- model

async function loadModel() {
  const response = await fetch(MODEL_URL, { cache: "no-store" });
  if (!response.ok) throw new Error(`cannot download ${MODEL_URL} (HTTP ${response.status})`);
  const bytes = new Uint8Array(await response.arrayBuffer());
  const meta = readMetadataProps(bytes);
  if (meta.has("qd.format") && meta.get("qd.format") !== MODEL_FORMAT) {
    throw new Error(`${MODEL_URL} has format ${meta.get("qd.format")}, this page reads ${MODEL_FORMAT}`);
  }
  if (!meta.has("qd.labels") || !meta.has(CANVAS_KEY)) {
    throw new Error(`${MODEL_URL} has no qd.labels / ${CANVAS_KEY} metadata (not made by qd-export --format onnx-canvas?)`);
  }
  const labels = JSON.parse(meta.get("qd.labels"));
  const openSet = parseOpenSet(meta, MODEL_URL);

  ort.env.wasm.wasmPaths = new URL("ort/", document.baseURI).href;
  ort.env.wasm.numThreads = 1; // no SharedArrayBuffer needed; a 28x28 CNN is fast on one thread
  const session = await ort.InferenceSession.create(bytes, {
    executionProviders: ["wasm"],
    graphOptimizationLevel: "all",
  });
  const missing = CANVAS_OUTPUTS.filter((name) => !session.outputNames.includes(name));
  if (session.inputNames.join() !== CANVAS_INPUT || missing.length) {
    throw new Error(`${MODEL_URL} is not a canvas model (input ${session.inputNames.join(", ")}, outputs ${session.outputNames.join(", ")})`);
  }
  return { session, labels, openSet, meta };
}

// The pad's pixels as the canvas model takes them: grey levels 0-255 (ITU-R 601 luma, as
// Pillow's convert("L")), transparent pixels flattened onto white as qd.data.images does.
function canvasGrey(imageData) {
  const { data, width, height } = imageData;
  const grey = new Float32Array(width * height);
  for (let i = 0; i < grey.length; i++) {
    const luma = 299 * data[4 * i] + 587 * data[4 * i + 1] + 114 * data[4 * i + 2];
    const a = data[4 * i + 3];
    grey[i] = Math.floor((luma * a + 255000 * (255 - a) + 127500) / 255000);
  }
  return new ort.Tensor("float32", grey, [1, 1, height, width]);
}

function classifyPixels(imageData) {
  return model.session.run({ [CANVAS_INPUT]: canvasGrey(imageData) }).then((outputs) => {
    const values = Object.fromEntries(Object.entries(outputs).map(([name, t]) => [name, Array.from(t.data)]));
    // A canvas without ink: the model answers all-zero probabilities (docs/canvas.md).
    if (!values.probabilities.some((p) => p > 0)) return { empty: true };
    return {
      empty: false,
      bitmap: Uint8Array.from(values.bitmap, (v) => Math.round(v)),
      probabilities: values.probabilities,
      unknown: model.openSet ? isUnknown(model.openSet, values) : null,
    };
  });
}

function currentPixels() {
  return ctx.getImageData(0, 0, pad.width, pad.height);
}

function topK(probabilities, k) {
  return probabilities
    .map((p, index) => ({ index, p }))
    .sort((a, b) => b.p - a.p || a.index - b.index)
    .slice(0, k);
}

function prettyLabel(label) {
  return label.replace(/_/g, " ");
}

function showResult(result) {
  lastResult = result;
  const best = result.empty ? [] : topK(result.probabilities, TOP_K);
  guessRows.forEach((row, i) => {
    const guess = best[i];
    row.querySelector(".label").textContent = guess ? prettyLabel(model.labels[guess.index]) : "…";
    row.querySelector(".pct").textContent = guess ? `${(guess.p * 100).toFixed(1)}%` : "";
    row.querySelector(".fill").style.width = guess ? `${(guess.p * 100).toFixed(2)}%` : "0%";
    row.dataset.label = guess ? model.labels[guess.index] : "";
    row.dataset.probability = guess ? String(guess.p) : "";
  });
  const unknown = !result.empty && result.unknown === true;
  for (const chip of classList.children) {
    chip.classList.toggle("top", best.length > 0 && !unknown && chip.dataset.label === model.labels[best[0].index]);
  }
  drawModelView(result.empty ? null : result.bitmap);
  document.body.classList.toggle("unknown", unknown);
  guessesTitle.textContent = unknown ? NOT_SURE : GUESSES_TITLE;
  if (result.empty) statusLine.textContent = `Draw something: ${model.labels.length} things to guess from.`;
  else if (unknown) statusLine.textContent = `It does not look much like any of the ${model.labels.length} things I know.`;
  else statusLine.textContent = `I think it's ${withArticle(prettyLabel(model.labels[best[0].index]))}.`;
}

function withArticle(noun) {
  return /^[aeiou]/i.test(noun) ? `an ${noun}` : `a ${noun}`;
}

function drawModelView(bitmap) {
  const side = modelView.width;
  const image = modelViewCtx.createImageData(side, side);
  for (let i = 0; i < side * side; i++) {
    const v = bitmap ? bitmap[i] : 0;
    image.data.set([v, v, v, 255], i * 4);
  }
  modelViewCtx.putImageData(image, 0, 0);
}

async function requestClassification() {
  if (!model) return;
  if (busy) {
    dirty = true;
    return;
  }
  busy = true;
  try {
    do {
      dirty = false;
      showResult(await classifyPixels(currentPixels()));
    } while (dirty);
  } catch (error) {
    fail(error);
  } finally {
    busy = false;
  }
}

function fail(error) {
  document.body.dataset.state = "error";
  statusLine.textContent = `Error: ${error.message || error}`;
  console.error(error);
}

function showModelInfo(meta) {
  for (const label of model.labels) {
    const chip = document.createElement("li");
    chip.textContent = prettyLabel(label);
    chip.dataset.label = label;
    classList.append(chip);
  }
  document.getElementById("class-count").textContent = `(${model.labels.length})`;
  const precision = meta.get("qd.precision") || "fp32";
  const arch = meta.has("qd.arch") ? JSON.parse(meta.get("qd.arch")).name : "model";
  const openSet = model.openSet ? "says when it is not sure" : "cannot say when it is not sure";
  document.getElementById("model-info").textContent =
    `${arch} · ${precision} · ${model.labels.length} classes · ${openSet} · onnxruntime-web ${ort.env.versions?.web ?? ""} (WebAssembly)`;
  if (meta.has("qd.license")) document.getElementById("license").textContent = meta.get("qd.license");
}

// ---------------------------------------------------------------- hooks for tests and scripts

// window.qdDemo lets the end-to-end tests (and curious users in the console) read
// exactly what the page computed for the pixels it shows.
window.qdDemo = {
  ready: null,
  labels: () => (model ? [...model.labels] : []),
  openSet: () => (model ? model.openSet : null),
  lastResult: () => lastResult,
  strokeCount: () => strokes.length,
  lastPointerType: () => lastPointerType,
  clear: clearDrawing,
  // Wait for pending work, then classify the pad as it is now and return the
  // probabilities together with the PNG of those very pixels.
  async snapshot() {
    while (busy || frameRequested) await new Promise((resolve) => setTimeout(resolve, 10));
    const pixels = currentPixels();
    const png = pad.toDataURL("image/png");
    const result = await classifyPixels(pixels);
    return { png, labels: [...model.labels], ...result, bitmap: result.bitmap ? Array.from(result.bitmap) : null };
  },
};

render();
window.qdDemo.ready = loadModel()
  .then((loaded) => {
    model = loaded;
    showModelInfo(loaded.meta);
    showResult({ empty: true });
    document.body.dataset.state = "ready";
    requestClassification();
  })
  .catch((error) => {
    fail(error);
    throw error;
  });
