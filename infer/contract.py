"""The open-set names and default, numpy-free so any command's --help can show them.

The names are the model contract's (qd.data.contract); infer/openset.py (the rule), export/ (which fits it)
and the web page read them; docs/open-set.md describes them."""

from qd.data.contract import LOGITS, META_OPEN_SET as OPEN_SET_KEY, META_TEMPERATURE as TEMPERATURE_KEY, PROBABILITIES

__all__ = ["DEFAULT_KEPT", "LOGITS", "OPEN_SET_KEY", "PROBABILITIES", "TEMPERATURE_KEY"]

DEFAULT_KEPT = 0.95  # share of the known validation drawings the fitted threshold keeps
