"""The float precision an int8 model runs its non-int8 layers in on OpenVINO, chosen per CPU
from what `bisenet calibrate` measured: the fastest precision that passed the accuracy gate
(int8+bf16 on a CPU with AVX512-BF16 or AMX when it passed, else int8+fp32). An explicit
--precision always wins; a model calibrated before the gate recorded precisions runs fp32.

    choose_precision(sidecar, cpu) -> ("bf16", "int8+bf16 passed the accuracy gate (...)")

The reason is the start-up line's "why" (OpenVinoEngine.describe()).
"""
from __future__ import annotations


def choose_precision(sidecar: dict, cpu, requested: str | None = None) -> tuple[str, str]:
    """(compute precision 'fp32' or 'bf16', reason in words) for this model on this CPU."""
    if requested:
        return requested, f"--precision {requested} given"
    if sidecar.get("precision", "fp32") != "int8":
        return "fp32", f"{sidecar.get('precision', 'fp32')} model: fp32 unless --precision bf16"
    gate = sidecar.get("accuracy_gate") or {}
    measured = gate.get("precisions")
    if measured is None:
        return "fp32", ("no per-precision gate in the sidecar (calibrated before it, or without --val); "
                        "recalibrate with --val to let bf16 be chosen")
    bf16 = measured.get("int8+bf16")
    if not cpu.bf16:
        return "fp32", f"this CPU has no bf16 (AVX512-BF16/AMX: {cpu.model})"
    if bf16 is None:
        why = (gate.get("not_evaluated") or {}).get("int8+bf16", "calibrated on a CPU without bf16")
        return "fp32", f"int8+bf16 was not gated ({why}); recalibrate here to measure it"
    if not bf16.get("passed"):
        return "fp32", (f"int8+bf16 failed the accuracy gate (mIoU drop {bf16['mIoU_drop']:.2f}, worst class "
                        f"{bf16.get('worst_class')} -{bf16.get('worst_class_drop') or 0:.2f})")
    return "bf16", (f"int8+bf16 passed the accuracy gate (mIoU drop {bf16['mIoU_drop']:.2f}) and this CPU "
                    "has bf16: the fastest passing precision")
