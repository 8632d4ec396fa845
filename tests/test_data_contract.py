"""The model contract is spelled once in qd.data.contract; the demo page's JavaScript (which runs the canvas model)
must spell it the same."""

import re
from pathlib import Path

from qd.data import contract

WEB = Path(__file__).resolve().parents[1] / "infer" / "web"
KEYS = {value for name, value in vars(contract).items() if name.startswith("META_")}


def _page_sources() -> str:
    return "\n".join(p.read_text() for p in sorted(WEB.glob("*.js")))


def test_every_metadata_key_the_page_reads_is_in_the_contract():
    used = set(re.findall(r'"(qd\.[a-z_]+)"', _page_sources()))
    assert used, "the page reads no qd.* metadata: the pattern is stale"
    assert used <= KEYS, f"keys the page reads that qd.data.contract does not define: {sorted(used - KEYS)}"


def test_the_page_uses_the_contracts_format_tag_and_canvas_io_names():
    source = _page_sources()
    assert f'const MODEL_FORMAT = "{contract.MODEL_FORMAT}";' in source
    assert f'const CANVAS_INPUT = "{contract.CANVAS_INPUT}";' in source, "the page feeds another input name"
    outputs = ", ".join(f'"{name}"' for name in contract.CANVAS_OUTPUTS)
    assert f"const CANVAS_OUTPUTS = [{outputs}];" in source, "the page expects other outputs"
    assert f'const CANVAS_KEY = "{contract.META_CANVAS}";' in source


def test_metadata_keys_are_distinct_and_namespaced():
    values = [value for name, value in vars(contract).items() if name.startswith("META_")]
    assert len(values) == len(set(values))
    assert all(v.startswith("qd.") for v in values)
