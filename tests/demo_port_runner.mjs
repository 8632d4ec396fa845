// Runs the demo page's JavaScript (infer/web/*.js) under Node for tests/test_demo.py.
//
//   node demo_port_runner.mjs metadata MODEL.onnx   -> JSON object of the model's metadata_props
//   node demo_port_runner.mjs openset CASES.json    -> JSON list: per case {score, unknown} or {error}
//
// CASES.json is a list of {"metadata": {key: value}, "outputs": {name: [numbers]}}.
import { readFileSync } from "node:fs";
import { readMetadataProps } from "../infer/web/onnx-metadata.js";
import { isUnknown, openSetScore, parseOpenSet } from "../infer/web/openset.js";

const [command, argument] = process.argv.slice(2);
if (command === "metadata") {
  process.stdout.write(JSON.stringify(Object.fromEntries(readMetadataProps(readFileSync(argument)))));
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
  process.stderr.write("usage: demo_port_runner.mjs metadata MODEL.onnx | openset CASES.json\n");
  process.exit(2);
}
