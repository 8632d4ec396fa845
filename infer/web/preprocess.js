// Canvas pixels -> model input: a step-by-step port of qd.data.images (data/images.py).
//
// The step numbers are those of that module's docstring, which is the specification;
// keep the two in step (tests/test_demo.py runs this file under Node against the
// Python original, constants included). Integer arithmetic through step 5 and in step 7
// is exact; step 6 uses float32 (Math.fround) as numpy does. The only float64 computation
// whose rounding may differ from numpy's is the matrix product of step 11, which can move
// a rare pixel by one grey level; the browser-vs-Python test bounds the effect on the
// probabilities by 1e-3.

export const CONSTANTS = Object.freeze({
  SIDE: 28,
  MIN_CONTRAST: 32,
  STRETCH_LO: 0.25,
  STRETCH_HI: 0.75,
  TRIM: 0.0005,
  LOCAL_MIN_SIDE: 128,
  LOCAL_CELLS: 16,
  LOCAL_RADIUS: 2,
  WORK_SIDE: 112,
  FRAME_UNITS: 304.0,
  INK_UNITS: 272.0,
  SKELETON_UNITS: 251.0,
  LINE_UNITS: 16.0,
});

const C = CONSTANTS;
const f32 = Math.fround;

// Step 1: grey levels G, alpha flattened onto white (or onto black for light ink on
// transparency). `rgba` is ImageData.data: unpremultiplied RGBA bytes.
export function rgbaToGray(rgba, width, height) {
  const count = width * height;
  const onWhite = new Uint8Array(count);
  let alphaMin = 255;
  let alphaMax = 0;
  for (let i = 0; i < count; i++) {
    const luma = 299 * rgba[4 * i] + 587 * rgba[4 * i + 1] + 114 * rgba[4 * i + 2];
    const a = rgba[4 * i + 3];
    if (a < alphaMin) alphaMin = a;
    if (a > alphaMax) alphaMax = a;
    onWhite[i] = Math.floor((luma * a + 255000 * (255 - a) + 127500) / 255000);
  }
  if (alphaMin !== alphaMax && inkHigh(onWhite).span < C.MIN_CONTRAST) {
    const onBlack = new Uint8Array(count);
    for (let i = 0; i < count; i++) {
      const luma = 299 * rgba[4 * i] + 587 * rgba[4 * i + 1] + 114 * rgba[4 * i + 2];
      onBlack[i] = Math.floor((luma * rgba[4 * i + 3] + 127500) / 255000);
    }
    return onBlack;
  }
  return onWhite;
}

// Step 2.
function histogram(values) {
  const hist = new Float64Array(256);
  for (let i = 0; i < values.length; i++) hist[values[i]] += 1;
  return hist;
}

// Step 3: the smallest grey level v with cumsum(hist)[v] >= q * N.
function percentile(hist, q) {
  let total = 0;
  for (let v = 0; v < 256; v++) total += hist[v];
  const limit = q * total;
  let cum = 0;
  for (let v = 0; v < 256; v++) {
    cum += hist[v];
    if (cum >= limit) return v;
  }
  return 255;
}

// Step 4: orient so ink is high; return { ink, background, span }.
export function inkHigh(gray) {
  let hist = histogram(gray);
  let ink = gray;
  const m = percentile(hist, 0.5);
  if (m - percentile(hist, 0.001) > percentile(hist, 0.999) - m) {
    ink = new Uint8Array(gray.length);
    for (let i = 0; i < gray.length; i++) ink[i] = 255 - gray[i];
    hist = hist.slice().reverse();
  }
  const background = percentile(hist, 0.5);
  return { ink, background, span: percentile(hist, 0.999) - background };
}

// Step 5: subtract a coarse background map (min of cell medians) to undo uneven lighting.
function subtractLocalBackground(ink, width, height) {
  const cell = Math.ceil(Math.max(width, height) / C.LOCAL_CELLS);
  const rows = Math.ceil(height / cell);
  const cols = Math.ceil(width / cell);
  const medians = new Float64Array(rows * cols);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) {
      const hist = new Float64Array(256);
      for (let y = i * cell; y < Math.min((i + 1) * cell, height); y++) {
        for (let x = j * cell; x < Math.min((j + 1) * cell, width); x++) hist[ink[y * width + x]] += 1;
      }
      medians[i * cols + j] = percentile(hist, 0.5);
    }
  }
  const background = windowFilter(medians, rows, cols, C.LOCAL_RADIUS, Math.min);
  const out = new Uint8Array(ink.length);
  for (let y = 0; y < height; y++) {
    const rowBase = Math.floor(y / cell) * cols;
    for (let x = 0; x < width; x++) {
      out[y * width + x] = Math.max(ink[y * width + x] - background[rowBase + Math.floor(x / cell)], 0);
    }
  }
  return out;
}

// Steps 2-12: grey levels (H x W, row-major) -> Uint8Array(28*28) bitmap, or null if blank.
export function grayToBitmap(gray, width, height) {
  let { ink, background, span } = inkHigh(gray);
  if (span >= C.MIN_CONTRAST && Math.max(width, height) >= C.LOCAL_MIN_SIDE) {
    ink = subtractLocalBackground(ink, width, height);
    const hist = histogram(ink);
    background = percentile(hist, 0.5);
    span = percentile(hist, 0.999) - background;
  }
  // Step 6: blank check, then the contrast stretch, in float32 as numpy (lo and hi are
  // float64 expressions cast to float32).
  if (span < C.MIN_CONTRAST) return null;
  const lo = f32(background + C.STRETCH_LO * span);
  const hi = f32(background + C.STRETCH_HI * span);
  const range = f32(hi - lo);
  const strength = new Float32Array(width * height);
  for (let i = 0; i < strength.length; i++) {
    const s = f32(f32(ink[i] - lo) / range);
    strength[i] = s < 0 ? 0 : s > 1 ? 1 : s;
  }
  return strengthToBitmap(strength, width, height);
}

// Steps 7-12 on the stretched ink strength S (H x W, values in [0, 1]).
export function strengthToBitmap(strength, width, height) {
  // Step 7: bounding box of the ink mask M = S >= 0.5, trimmed for specks.
  const mask = new Uint8Array(strength.length);
  const col = new Float64Array(width);
  const row = new Float64Array(height);
  let total = 0;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (strength[y * width + x] >= 0.5) {
        mask[y * width + x] = 1;
        col[x] += 1;
        row[y] += 1;
        total += 1;
      }
    }
  }
  if (total === 0) return null;
  const [x0, x1] = trimmedBounds(col, total);
  const [y0, y1] = trimmedBounds(row, total);
  // Step 8: a square frame fitted to the drawing's skeleton, centred on the box.
  const side = Math.max(x1 - x0 + 1, y1 - y0 + 1);
  const penWidth = Math.min(strokeWidth(mask, width, height), (side * C.LINE_UNITS) / C.INK_UNITS);
  const frame = ((side - penWidth) * C.FRAME_UNITS) / C.SKELETON_UNITS;
  const frameX = (x0 + x1 + 1) / 2.0 - frame / 2.0;
  const frameY = (y0 + y1 + 1) / 2.0 - frame / 2.0;
  const factor = Math.max(1, Math.floor(frame / C.WORK_SIDE));
  const n = Math.ceil((frame + 1.0) / factor);
  const left = Math.floor(frameX);
  const top = Math.floor(frameY);
  // Steps 9-10.
  let pooled = maxPoolRegion(strength, width, height, top, left, n, factor);
  pooled = thicken(pooled, n, ((frame / factor) * C.LINE_UNITS) / C.FRAME_UNITS);
  // Step 11.
  const wy = areaWeights(n, C.SIDE, (frameY - top) / factor, frame / factor);
  const wx = areaWeights(n, C.SIDE, (frameX - left) / factor, frame / factor);
  const out = weightedAverage(wy, pooled, wx, n, C.SIDE);
  // Step 12.
  const bitmap = new Uint8Array(C.SIDE * C.SIDE);
  for (let i = 0; i < bitmap.length; i++) {
    bitmap[i] = Math.min(255, Math.max(0, Math.floor(out[i] * 255.0 + 0.5)));
  }
  return bitmap;
}

// Step 7: first index whose prefix sum exceeds TRIM * total, last whose suffix sum does.
function trimmedBounds(mass, total) {
  const limit = C.TRIM * total;
  let first = 0;
  let cum = 0;
  for (let i = 0; i < mass.length; i++) {
    cum += mass[i];
    if (cum > limit) {
      first = i;
      break;
    }
  }
  let last = mass.length - 1;
  let suffix = 0;
  for (let i = mass.length - 1; i >= 0; i--) {
    suffix += mass[i];
    if (suffix > limit) {
      last = i;
      break;
    }
  }
  return [first, Math.max(first, last)];
}

// Step 10's stroke_width: 2 * area / boundary pixels of a 0/1 mask (0 without ink).
function strokeWidth(mask, width, height) {
  const at = (y, x) => y >= 0 && x >= 0 && y < height && x < width && mask[y * width + x] === 1;
  let area = 0;
  let interior = 0;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (mask[y * width + x] !== 1) continue;
      area++;
      if (at(y - 1, x) && at(y + 1, x) && at(y, x - 1) && at(y, x + 1)) interior++;
    }
  }
  return area === 0 ? 0.0 : (2.0 * area) / (area - interior);
}

// Steps 8-9: crop the (n*factor)-square region (zero outside the image) and max-pool it.
function maxPoolRegion(strength, width, height, top, left, n, factor) {
  const pooled = new Float32Array(n * n);
  for (let by = 0; by < n; by++) {
    for (let bx = 0; bx < n; bx++) {
      let best = 0;
      for (let dy = 0; dy < factor; dy++) {
        const y = top + by * factor + dy;
        if (y < 0 || y >= height) continue;
        for (let dx = 0; dx < factor; dx++) {
          const x = left + bx * factor + dx;
          if (x < 0 || x >= width) continue;
          const s = strength[y * width + x];
          if (s > best) best = s;
        }
      }
      pooled[by * n + bx] = best;
    }
  }
  return pooled;
}

// Step 10: widen strokes thinner than the dataset's line width with a square max filter.
function thicken(q, n, target) {
  const mask = new Uint8Array(q.length);
  for (let i = 0; i < q.length; i++) mask[i] = q[i] >= 0.5 ? 1 : 0;
  const width = strokeWidth(mask, n, n);
  if (width === 0.0 || width >= target) return q;
  const radius = Math.floor((target - width) / 2.0 + 0.5);
  return radius > 0 ? windowFilter(q, n, n, radius, Math.max) : q;
}

// A separable (2r+1)-square max (or min) filter over a rows x cols grid, window clipped at the borders.
function windowFilter(a, rows, cols, radius, pick) {
  const along = (src, outer, inner, stride, step) => {
    const out = new src.constructor(src.length);
    for (let o = 0; o < outer; o++) {
      for (let i = 0; i < inner; i++) {
        let best = src[o * stride + i * step];
        const lo = Math.max(0, i - radius);
        const hi = Math.min(inner - 1, i + radius);
        for (let k = lo; k <= hi; k++) best = pick(best, src[o * stride + k * step]);
        out[o * stride + i * step] = best;
      }
    }
    return out;
  };
  const byColumn = along(a, cols, rows, 1, cols); // along y (numpy axis 0)
  return along(byColumn, rows, cols, cols, 1); // along x (axis 1)
}

// Step 11: (nOut x nIn) weights: overlap of source pixel [k, k+1) with output cell i
// = [start + i*cell, start + (i+1)*cell), cell = length / nOut, over the cell width.
export function areaWeights(nIn, nOut, start, length) {
  const cell = length / nOut;
  const w = new Float64Array(nOut * nIn);
  for (let i = 0; i < nOut; i++) {
    const from = start + i * cell;
    const to = from + cell;
    for (let k = 0; k < nIn; k++) {
      const overlap = Math.min(k + 1, to) - Math.max(k, from);
      w[i * nIn + k] = (overlap > 0 ? overlap : 0) / cell;
    }
  }
  return w;
}

// Step 11: out = (Wy Q) Wx^T in float64, the association numpy uses for `wy @ q @ wx.T`.
function weightedAverage(wy, q, wx, n, nOut) {
  const tmp = new Float64Array(nOut * n);
  for (let i = 0; i < nOut; i++) {
    for (let k = 0; k < n; k++) {
      const weight = wy[i * n + k];
      if (weight === 0) continue;
      for (let x = 0; x < n; x++) tmp[i * n + x] += weight * q[k * n + x];
    }
  }
  const out = new Float64Array(nOut * nOut);
  for (let i = 0; i < nOut; i++) {
    for (let j = 0; j < nOut; j++) {
      let sum = 0;
      for (let x = 0; x < n; x++) sum += tmp[i * n + x] * wx[j * n + x];
      out[i * nOut + j] = sum;
    }
  }
  return out;
}

// qd.data.preprocess.bitmaps_to_input for one bitmap, in float32 as numpy.
export function bitmapToInput(bitmap, spec) {
  const scale = f32(spec.scale);
  const mean = spec.mean ?? 0.0;
  const std = spec.std ?? 1.0;
  const input = new Float32Array(bitmap.length);
  for (let i = 0; i < bitmap.length; i++) {
    let v = f32(bitmap[i] * scale);
    if (mean !== 0.0 || std !== 1.0) v = f32(f32(v - f32(mean)) / f32(std));
    input[i] = v;
  }
  return input;
}

/** ImageData -> { bitmap: Uint8Array(784), input: Float32Array(784) }, or null for a blank pad. */
export function preprocessImageData(imageData, spec) {
  const { data, width, height } = imageData;
  if (spec.input_size !== C.SIDE) throw new Error(`model expects ${spec.input_size}px input; this page makes ${C.SIDE}px`);
  const bitmap = grayToBitmap(rgbaToGray(data, width, height), width, height);
  return bitmap === null ? null : { bitmap, input: bitmapToInput(bitmap, spec) };
}
