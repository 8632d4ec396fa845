"""Which CPU a figure was measured on: its model name and the features that decide int8, bf16 and speed.

Every speed figure (bench output, qd-export's int8 speed check, qd-eval's report.json)
names its CPU through this module, so figures from different machines are never mixed up.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

# /proc/cpuinfo flag -> the name people know it by, in the order they are printed.
FEATURES = {
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX512-VNNI",
    "avx_vnni": "AVX-VNNI",
    "amx_int8": "AMX-INT8",
    "avx512_bf16": "AVX512-BF16",
    "amx_bf16": "AMX-BF16",
    "asimddp": "ARM dot product",
    "bf16": "ARM bf16",
}


@dataclass(frozen=True)
class CpuInfo:
    model: str
    cores: int
    features: tuple[str, ...]  # the FEATURES names this CPU has

    @property
    def vnni(self) -> bool:
        """int8 dot products without int16 saturation (x86 VNNI or AMX, ARM dot product)."""
        return any(f in self.features for f in ("AVX512-VNNI", "AVX-VNNI", "AMX-INT8", "ARM dot product"))

    @property
    def native_bf16(self) -> bool:
        return any(f in self.features for f in ("AVX512-BF16", "AMX-BF16", "ARM bf16"))

    def summary(self) -> str:
        """One line, e.g. 'AMD EPYC, 2 cores, AVX2, no AVX-512/VNNI/AMX/bf16'."""
        have = [f for f in self.features if f in ("AVX2", "AVX-512", "ARM dot product")]
        if self.vnni:
            have += [f for f in self.features if "VNNI" in f or f == "AMX-INT8"]
        if self.native_bf16:
            have.append("native bf16")
        missing = [name for name, present in (("AVX-512", "AVX-512" in self.features), ("VNNI", self.vnni),
                                              ("AMX", "AMX-INT8" in self.features), ("bf16", self.native_bf16))
                   if not present]
        parts = [self.model, f"{self.cores} cores", *have]
        if missing:
            parts.append("no " + "/".join(missing))
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return {**asdict(self), "features": list(self.features), "summary": self.summary()}


def parse_cpuinfo(text: str, cores: int) -> CpuInfo:
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return CpuInfo(model=model or platform.processor() or platform.machine(), cores=cores,
                   features=tuple(name for flag, name in FEATURES.items() if flag in flags))


@lru_cache(maxsize=1)
def cpu() -> CpuInfo:
    """This machine's CPU (from /proc/cpuinfo on Linux; the model name alone elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    return parse_cpuinfo(text, os.cpu_count() or 1)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one): the default
    number of decode worker processes."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
