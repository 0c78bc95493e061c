"""bench/models.py runs end to end at a tiny size and writes what it promises (a smoke test:
no speed is asserted; rows that cannot run are skipped with their reason)."""
import importlib.util
import json

from testkit.app_helpers import REPO


def test_bench_models_smoke(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_models", REPO / "bench" / "models.py")
    bench_models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_models)
    out = tmp_path / "r"
    assert bench_models.main(["--sizes", "64x96", "--runs", "1", "--warmup", "0", "--threads", "1", "--no-compile",
                              "--calib-data", str(tmp_path / "none"), "--workdir", str(tmp_path),
                              "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    rows = {(r["name"], r["precision"]): r for r in report["rows"]}
    assert set(rows) == {(name, precision) for name, _, precision in bench_models.ROWS}
    assert rows[("torch.compile", "fp32")]["skipped"] == "--no-compile"
    assert "no calibration images" in rows[("openvino", "int8+fp32")]["skipped"]
    ort = rows[("onnxruntime", "fp32")]
    assert ort["median_ms"] > 0 and ort["vs_ort_fp32"] == 1.0 and ort["gflops"] > 0
    assert rows[("openvino", "fp32")]["vs_own_fp32"] == 1.0 and rows[("pytorch eager", "fp32")]["vs_eager"] == 1.0
    assert out.with_suffix(".png").stat().st_size > 0
    assert "skipped: --no-compile" in capsys.readouterr().out
    ceiling = report["ceiling_gflops"]
    assert ceiling["int8"] >= ceiling["bf16"] >= ceiling["fp32"] > 0
    assert all(r["pct_peak"] <= 100 for r in report["rows"] if r.get("median_ms")), report["rows"]


def test_ceiling_per_precision_from_the_isa():
    """cores x FLOP/cycle x clock, FLOP/cycle per microarchitecture: AVX-512 doubles the lanes on
    Intel's two 512-bit units and Zen 5's 512-bit pipes, not on Zen 4's double-pumped 256-bit ones
    nor on a one-unit Xeon Silver; bf16 is 2x fp32 with AVX512-BF16; int8 4x fp32 (VNNI), AMX its own."""
    spec = importlib.util.spec_from_file_location("bench_models", REPO / "bench" / "models.py")
    bench_models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_models)
    from engines.cpu_features import detect

    zen4 = detect(force="avx2,fma,avx512,vnni,bf16", cpuinfo="model name\t: AMD EPYC 9R14\n")
    spr = detect(force="avx2,fma,avx512,vnni,bf16,amx", cpuinfo="model name\t: Intel(R) Xeon(R) Platinum 8488C\n")
    zen3 = detect(force="avx2,fma", cpuinfo="model name\t: AMD EPYC 7R13\n")
    assert bench_models.flop_per_cycle(zen4) == {"fp32": 32, "bf16": 64, "int8": 128}
    assert bench_models.flop_per_cycle(spr) == {"fp32": 64, "bf16": 1024, "int8": 2048}
    assert bench_models.flop_per_cycle(zen3) == {"fp32": 32, "bf16": 32, "int8": 128}
    zen5 = detect(force="avx2,fma,avx512,vnni,bf16", cpuinfo="model name\t: AMD EPYC 9R45\n")
    assert bench_models.microarchitecture(zen5, family=26)[:2] == ("AMD Zen 5", 64)
    assert bench_models.flop_per_cycle(zen5, family=26) == {"fp32": 64, "bf16": 128, "int8": 256}
    assert bench_models.microarchitecture(zen4, family=25)[:2] == ("AMD Zen 4", 32)
    silver = detect(force="avx2,fma,avx512,vnni", cpuinfo="model name\t: Intel(R) Xeon(R) Silver 4214\n")
    name, fp32, caveat = bench_models.microarchitecture(silver, family=6)
    assert fp32 == 32 and "one 512-bit FMA unit" in caveat
    assert bench_models.cpuinfo_ids("vendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\n") == \
        ("AuthenticAMD", 26, 2)
