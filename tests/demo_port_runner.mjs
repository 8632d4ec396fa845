// Runs the demo page's JavaScript (infer/web/*.js) under Node for tests/test_demo.py.
//
//   node demo_port_runner.mjs preprocess JOBS.json  -> JSON list: 784 grey levels or null per image
//   node demo_port_runner.mjs metadata MODEL.onnx   -> JSON object of the model's metadata_props
//   node demo_port_runner.mjs constants             -> JSON object of preprocess.js's constants
//
// JOBS.json is a list of {"rgba": path of raw RGBA bytes, "width": W, "height": H}.
import { readFileSync } from "node:fs";
import { readMetadataProps } from "../infer/web/onnx-metadata.js";
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
} else {
  process.stderr.write("usage: demo_port_runner.mjs preprocess JOBS.json | metadata MODEL.onnx | constants\n");
  process.exit(2);
}
