"""The onnxruntime sessions qd-export's validators run: open one, run it in batches, time
several side by side."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from qd.data.contract import INPUT as INPUT_NAME, OUTPUTS as OUTPUT_NAMES


def ort_session(path: Path, threads: int | None = None,
                optimization: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                ) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    options.graph_optimization_level = optimization
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_batched(session: ort.InferenceSession, inputs: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
    probs, logits = [], []
    for start in range(0, len(inputs), batch):
        p, z = session.run(list(OUTPUT_NAMES), {INPUT_NAME: inputs[start : start + batch]})
        probs.append(p)
        logits.append(z)
    return np.concatenate(probs), np.concatenate(logits)


def interleaved_throughput(sessions: dict[str, ort.InferenceSession], inputs: np.ndarray,
                           batch: int = 256, rounds: int = 15) -> dict[str, float]:
    """Images/s of each session at a fixed batch, measured side by side.

    Runs alternate between the sessions (after a warm-up) and each keeps its median
    run time, so background load on a shared machine hits all of them alike.
    """
    x = np.ascontiguousarray(np.resize(inputs, (batch, *inputs.shape[1:])))
    for session in sessions.values():
        session.run(None, {INPUT_NAME: x})
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, {INPUT_NAME: x})
            times[name].append(time.perf_counter() - start)
    return {name: batch / float(np.median(t)) for name, t in times.items()}
