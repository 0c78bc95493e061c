"""What this CPU can do for inference: model, cores, the ISA features the backends' fast
paths need (AVX2, AVX-512, VNNI, AVX512-BF16, AMX), read from /proc/cpuinfo's flags.

The precision choice (engines/precision.py), `bisenet doctor` and the bench's ceiling read
this. Tests and "what would it do on that CPU" checks force the features:

    BISENET_CPU_FEATURES=avx2,avx512,vnni      # exactly these (no bf16, no amx)
    BISENET_CPU_FEATURES=none                  # none of them
    detect(force="avx2,avx512,vnni,bf16")      # the same, as a parameter

Forced features replace the detected ones (the model name and cores stay the machine's).
"""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

FORCE_ENV = "BISENET_CPU_FEATURES"
FEATURES = ("avx2", "fma", "avx512", "vnni", "bf16", "amx")
# feature -> any of these /proc/cpuinfo flags (Linux names). vnni counts the AVX-512 and
# the VEX (AVX-VNNI, Alder Lake+) forms; bf16 is the AVX-512 dot-product instruction set;
# amx is the tile unit with its int8/bf16 matrix instructions.
FLAGS = {
    "avx2": ("avx2",),
    "fma": ("fma",),
    "avx512": ("avx512f",),
    "vnni": ("avx512_vnni", "avx_vnni"),
    "bf16": ("avx512_bf16", "amx_bf16"),
    "amx": ("amx_tile",),
}


@dataclass(frozen=True)
class CpuFeatures:
    model: str
    cores: int
    features: frozenset = field(default_factory=frozenset)
    mhz: float | None = None          # the clock /proc/cpuinfo reports (base clock in a VM)
    source: str = "/proc/cpuinfo"     # or "forced by BISENET_CPU_FEATURES=..."

    def has(self, feature: str) -> bool:
        if feature not in FEATURES:
            raise ValueError(f"unknown CPU feature {feature!r}; one of {', '.join(FEATURES)}")
        return feature in self.features

    @property
    def bf16(self) -> bool:
        """The CPU computes bf16 natively (AVX512-BF16 or AMX): OpenVINO's bf16 is fast here."""
        return self.has("bf16") or self.has("amx")

    def summary(self) -> str:
        have = ", ".join(f for f in FEATURES if f in self.features) or "none of " + "/".join(FEATURES)
        forced = f" ({self.source})" if self.source != "/proc/cpuinfo" else ""
        return f"{self.model}, {self.cores} cores, {have}{forced}"

    def to_json(self) -> dict:
        return {"model": self.model, "cores": self.cores, "mhz": self.mhz, "source": self.source,
                **{f: f in self.features for f in FEATURES}}


def parse_cpuinfo(text: str) -> tuple[str, float | None, set]:
    """(model name, MHz, flags) of the first processor in /proc/cpuinfo text."""
    model, mhz, flags = platform.processor() or "unknown CPU", None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == (platform.processor() or "unknown CPU"):
            model = value.strip()
        elif key == "cpu MHz" and mhz is None:
            try:
                mhz = float(value)
            except ValueError:
                pass
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model, mhz, flags


def features_from_flags(flags: set) -> frozenset:
    return frozenset(f for f, names in FLAGS.items() if any(n in flags for n in names))


def parse_forced(text: str) -> frozenset:
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if names == ["none"]:
        return frozenset()
    unknown = [n for n in names if n not in FEATURES]
    if unknown:
        raise ValueError(f"{FORCE_ENV}={text!r}: unknown feature {', '.join(unknown)}; "
                         f"use a comma list of {', '.join(FEATURES)}, or none")
    return frozenset(names)


def detect(force: str | None = None, cpuinfo: str | None = None) -> CpuFeatures:
    """This machine's CPU; `force` (else $BISENET_CPU_FEATURES) replaces the detected features."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    model, mhz, flags = parse_cpuinfo(cpuinfo)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    force = force if force is not None else os.environ.get(FORCE_ENV)
    if force is not None and force.strip():
        return CpuFeatures(model, cores, parse_forced(force), mhz, f"forced by {FORCE_ENV}={force}")
    return CpuFeatures(model, cores, features_from_flags(flags), mhz)
