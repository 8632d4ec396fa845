"""The open-set contract's names and default, numpy-free so any command's --help can show them.

infer/openset.py (the rule), export/ (which fits it) and the web page read these; docs/open-set.md
describes them."""

TEMPERATURE_KEY = "qd.temperature"
OPEN_SET_KEY = "qd.open_set"
PROBABILITIES = "probabilities"
LOGITS = "logits"
DEFAULT_KEPT = 0.95  # share of the known validation drawings the fitted threshold keeps
