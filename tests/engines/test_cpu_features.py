"""engines/cpu_features.py: ISA features from /proc/cpuinfo text, and forcing them."""
import pytest

from engines.cpu_features import FORCE_ENV, detect

ZEN4 = """processor\t: 0
model name\t: AMD EPYC 9R14 96-Core Processor
cpu MHz\t\t: 2600.000
flags\t\t: fpu sse2 avx fma avx2 avx512f avx512bw avx512_vnni avx512_bf16 vaes
"""
SPR = ZEN4.replace("AMD EPYC 9R14 96-Core Processor", "Intel(R) Xeon(R) Platinum 8488C").replace(
    "vaes", "amx_bf16 amx_tile amx_int8")
ZEN3 = "model name\t: AMD EPYC 7R13\ncpu MHz\t: 2445.4\nflags\t: fpu sse2 avx fma avx2 vaes\n"


def test_features_from_cpuinfo(monkeypatch):
    monkeypatch.delenv(FORCE_ENV, raising=False)
    zen4 = detect(cpuinfo=ZEN4)
    assert zen4.model.startswith("AMD EPYC 9R14") and zen4.mhz == 2600.0 and zen4.cores >= 1
    assert {"avx2", "fma", "avx512", "vnni", "bf16"} <= zen4.features and not zen4.has("amx") and zen4.bf16
    spr = detect(cpuinfo=SPR)
    assert spr.has("amx") and spr.bf16
    zen3 = detect(cpuinfo=ZEN3)
    assert zen3.features == {"avx2", "fma"} and not zen3.bf16
    assert "avx2, fma" in zen3.summary()


def test_forced_features_replace_the_detected_ones(monkeypatch):
    monkeypatch.setenv(FORCE_ENV, "avx2,avx512,vnni")
    cpu = detect(cpuinfo=ZEN4)
    assert cpu.features == {"avx2", "avx512", "vnni"} and not cpu.bf16
    assert FORCE_ENV in cpu.source and FORCE_ENV in cpu.summary()
    assert detect(force="none", cpuinfo=ZEN4).features == frozenset()
    assert detect(force="bf16", cpuinfo=ZEN3).bf16          # the parameter wins over the env too
    with pytest.raises(ValueError, match="unknown feature avx1024"):
        detect(force="avx2,avx1024")


def test_this_machine(monkeypatch):
    monkeypatch.delenv(FORCE_ENV, raising=False)
    cpu = detect()
    assert cpu.cores >= 1 and cpu.model and set(cpu.to_json()) >= {"model", "cores", "bf16", "amx"}
