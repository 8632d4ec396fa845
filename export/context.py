"""The state one `qd-export` run shares between its formats, and what a check reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from qd.data.contract import DEFAULT_KEPT

from .defaults import DEFAULT_INT8_MAX_PROB_DIFF, DEFAULT_INT8_TOLERANCE, DEFAULT_OPSET  # noqa: F401
from .confidence import Confidence, fit_confidence, unfitted
from .checkpoint_source import (DEFAULT_MAX_DRAWINGS, CheckpointSource, ValidationData, load_validation_data,
                                torch_outputs)



@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    values: dict = field(default_factory=dict)  # numbers for model.json
    hint: str = ""  # what the user can do if this check refuses the file

    def to_dict(self) -> dict:
        return {"check": self.name, "passed": self.passed, "detail": self.detail, **self.values}


@dataclass
class ExportContext:
    source: CheckpointSource
    out_dir: Path  # where this run writes (the staging folder)
    previous_dir: Path | None = None  # the export folder being replaced (its previous set), if any
    opset: int = DEFAULT_OPSET
    data_dir: Path | None = None
    max_drawings: int = DEFAULT_MAX_DRAWINGS
    int8_tolerance: float = DEFAULT_INT8_TOLERANCE
    int8_max_prob_diff: float = DEFAULT_INT8_MAX_PROB_DIFF
    kept: float = DEFAULT_KEPT  # share of known validation drawings the open-set threshold keeps
    written: dict[str, Path] = field(default_factory=dict)  # format name -> committed file
    shared: dict = field(default_factory=dict)  # what one format's validation computed that another reuses

    @cached_property
    def data(self) -> ValidationData:
        return load_validation_data(self.source, self.data_dir, self.max_drawings)

    @cached_property
    def confidence(self) -> Confidence:
        """Temperature and open-set threshold, fitted once per run on the validation split."""
        data = self.data
        if data.synthetic or data.fit_inputs is None:
            return unfitted(data.fit_description)
        _, logits = torch_outputs(self.source, data.fit_inputs)
        return fit_confidence(logits, data.fit_labels, self.kept, fitted_on=data.fit_description)

    def model_metadata(self, precision: str = "fp32") -> dict[str, str]:
        """Every exported model's metadata: the checkpoint's card plus what this run fitted."""
        return {**self.source.model_metadata(precision), **self.confidence.metadata()}

    @cached_property
    def reference(self) -> tuple[np.ndarray, np.ndarray]:
        """torch (calibrated probabilities, logits) on the validation inputs, computed once per run."""
        return torch_outputs(self.source, self.data.inputs, self.confidence.temperature)
