// Runs the demo page's JavaScript (infer/web/*.js) under Node for tests/test_demo.py.
//
//   node demo_port_runner.mjs preprocess JOBS.json  -> JSON list: 784 grey levels or null per image
//   node demo_port_runner.mjs metadata MODEL.onnx   -> JSON object of the model's metadata_props
//   node demo_port_runner.mjs constants             -> JSON object of preprocess.js's constants
//   node demo_port_runner.mjs openset CASES.json    -> JSON list: per case {score, unknown} or {error}
//
// JOBS.json is a list of {"rgba": path of raw RGBA bytes, "width": W, "height": H}.
// CASES.json is a list of {"metadata": {key: value}, "outputs": {name: [numbers]}}.
import { readFileSync } from "node:fs";
import { readMetadataProps } from "../infer/web/onnx-metadata.js";
import { isUnknown, openSetScore, parseOpenSet } from "../infer/web/openset.js";
import { CONSTANTS, grayToBitmap, rgbaToGray } from "../infer/web/preprocess.js";

const [command, argument] = process.argv.slice(2);
if (command === "preprocess") {
  const results = JSON.parse(readFileSync(argument, "utf8")).map(({ rgba, width, height }) => {
    const bitmap = grayToBitmap(rgbaToGray(new Uint8Array(readFileSync(rgba)), width, height), width, height);
    return bitmap === null ? null : Array.from(bitmap);
  });
  process.stdout.write(JSON.stringify(results));
} else if (command === "metadata") {
  process.stdout.write(JSON.stringify(Object.fromEntries(readMetadataProps(readFileSync(argument)))));
} else if (command === "constants") {
  process.stdout.write(JSON.stringify(CONSTANTS));
} else if (command === "openset") {
  const results = JSON.parse(readFileSync(argument, "utf8")).map(({ metadata, outputs }) => {
    try {
      const rule = parseOpenSet(new Map(Object.entries(metadata)));
      if (rule === null) return { rule: null, unknown: isUnknown(rule, outputs) };
      return { rule: rule.rule, score: openSetScore(rule, outputs), unknown: isUnknown(rule, outputs) };
    } catch (error) {
      return { error: error.message };
    }
  });
  process.stdout.write(JSON.stringify(results));
} else {
  process.stderr.write("usage: demo_port_runner.mjs preprocess JOBS.json | metadata MODEL.onnx | constants | openset CASES.json\n");
  process.exit(2);
}
