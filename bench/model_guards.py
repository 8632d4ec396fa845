"""What the guards on a model we did not make cost, measured side by side in one process.

Prints, for an exported model (default: artifacts/exports/demo/model.onnx, 1.2 MB):
  1. load: check_graph (the operator, subgraph, node-count and external-data checks read from the
     protobuf wire format) against onnxruntime building the session from the same bytes, each the
     median of many calls taken in turn (qd.infer.model.call_seconds), and their ratio;
  2. run: one batch through qd's Session.run (a run in the main thread goes through a helper thread
     so Ctrl-C can stop it; RunOptions with the log off; the arena of MAX_RUN_BYTES) against a plain
     onnxruntime session's run (its own arena, default options), at batch 1 and 512, and the ratio.

    python bench/model_guards.py [MODEL] [--rounds 30]
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    import onnxruntime as ort

    from qd.data.contract import INPUT
    from qd.infer.model import call_seconds, check_graph, open_session, read_model_bytes
    from qd.machine import cpu

    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", default=REPO / "artifacts/exports/demo/model.onnx", type=Path)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    model = read_model_bytes(args.model)
    print(f"{args.model} ({len(model) / 2**20:.1f} MiB) on {cpu().summary()}")

    def build() -> None:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])

    load = call_seconds({"check_graph": partial(check_graph, args.model, model), "session": build},
                        min_rounds=args.rounds)
    print(f"load: check_graph {load['check_graph'] * 1e3:.2f} ms, onnxruntime session {load['session'] * 1e3:.1f} ms "
          f"(check_graph adds {load['check_graph'] / load['session']:.1%})")

    guarded = open_session(args.model, threads=1, model=model)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    plain = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    for batch in (1, 512):
        x = np.random.default_rng(0).random((batch, 1, 28, 28), dtype=np.float32)
        run = call_seconds({"guarded": partial(guarded.run, None, {INPUT: x}),
                            "plain": partial(plain.run, None, {INPUT: x})}, min_rounds=args.rounds)
        print(f"run, batch {batch}: guarded {run['guarded'] * 1e3:.3f} ms, plain {run['plain'] * 1e3:.3f} ms "
              f"(guarded / plain {run['guarded'] / run['plain']:.3f})")


if __name__ == "__main__":
    main()
