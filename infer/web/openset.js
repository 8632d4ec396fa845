// The open-set rule, as infer/openset.py applies it: a drawing is unknown when the score of
// one model output is below the threshold written in the model's qd.open_set metadata.
// Keep SCORES in step with that module's (tests/test_demo.py compares the two under Node).

export const OPEN_SET_KEY = "qd.open_set";

function maximum(values) {
  let best = -Infinity;
  for (const v of values) if (v > best) best = v;
  return best;
}

function logSumExp(values) {
  const top = maximum(values);
  let sum = 0;
  for (const v of values) sum += Math.exp(v - top);
  return top + Math.log(sum);
}

// rule name -> the graph output it reads and its score (higher = more like the known classes)
export const SCORES = Object.freeze({
  max_probability: { output: "probabilities", score: maximum },
  max_logit: { output: "logits", score: maximum },
  energy: { output: "logits", score: logSumExp },
});

function isFiniteNumber(value) {
  return typeof value === "number" && Number.isFinite(value);
}

/** The model's rule {rule, output, threshold} from its metadata Map, null if it has none; throws if malformed. */
export function parseOpenSet(meta, where = "model.onnx") {
  if (!meta.has(OPEN_SET_KEY)) return null;
  const bad = (why) => new Error(`${where}: model metadata ${OPEN_SET_KEY} ${why}`);
  let record;
  try {
    record = JSON.parse(meta.get(OPEN_SET_KEY));
  } catch {
    throw bad("is not valid JSON");
  }
  if (record === null || typeof record !== "object" || Array.isArray(record)) {
    throw bad("must be a JSON object with rule and threshold");
  }
  if (!Object.hasOwn(SCORES, record.rule)) {
    throw bad(`names rule ${JSON.stringify(record.rule)}, this page knows ${Object.keys(SCORES).join(", ")}`);
  }
  if (!isFiniteNumber(record.threshold)) throw bad("threshold must be a finite number");
  return { rule: record.rule, output: SCORES[record.rule].output, threshold: record.threshold };
}

/** The rule's score of one drawing's outputs ({probabilities: [...], logits: [...]}). */
export function openSetScore(rule, outputs) {
  return SCORES[rule.rule].score(outputs[rule.output]);
}

export function isUnknown(rule, outputs) {
  return rule !== null && openSetScore(rule, outputs) < rule.threshold;
}
