"""qd.machine: every speed figure names its CPU and the features that decide int8 and bf16."""

from qd.machine import cpu, parse_cpuinfo

AMD_EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni vaes
"""
INTEL_SPR = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8 avx_vnni
"""
ARM = """processor\t: 0
Features\t: fp asimd evtstrm aes sha1 sha2 crc32 atomics asimddp
CPU implementer\t: 0x41
"""


def test_amd_without_vnni_or_bf16():
    info = parse_cpuinfo(AMD_EPYC, 2)
    assert info.features == ("AVX2",) and not info.vnni and not info.native_bf16
    assert info.summary() == "AMD EPYC, 2 cores, AVX2, no AVX-512/VNNI/AMX/bf16"


def test_intel_with_vnni_amx_and_bf16():
    info = parse_cpuinfo(INTEL_SPR, 2)
    assert info.vnni and info.native_bf16
    summary = info.summary()
    assert summary.startswith("Intel(R) Xeon(R) Platinum 8481C") and "AVX-512" in summary
    assert "AVX512-VNNI" in summary and "AMX-INT8" in summary and "native bf16" in summary and " no " not in summary


def test_arm_dot_product_counts_as_saturation_free_int8():
    info = parse_cpuinfo(ARM, 4)
    assert info.vnni and not info.native_bf16 and info.model  # falls back to the platform's name


def test_this_machine_is_described():
    info = cpu()
    assert info.cores >= 1 and info.summary().startswith(info.model)
    assert set(info.to_dict()) >= {"model", "cores", "features", "summary"}
