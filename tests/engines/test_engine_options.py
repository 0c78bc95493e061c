"""Engine options are declared once, beside their engine (engines/*_engine.py, gathered by
engines/load.py's EngineOptions), and reach the `bisenet run` flags, preset keys and
load_model's keywords from there; `--device cpu|cuda[:N]` chooses the PyTorch engine."""
from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import inspect

import pytest

import bisenet_edge
from app import settings
from app.cli import main as bisenet_main
from core.errors import InputError
from engines.load import EngineOptions
from testkit.app_helpers import REPO, tiny_onnx

CAMVID = "bisenetv1_r18-d32_camvid-360x480"


def torch_has_cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


def one_line_exit_2(argv, capsys) -> str:
    try:
        code = bisenet_main(argv)
    except SystemExit as e:   # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, (code, err)
    return err


def run_argv(tmp_path, model, *more):
    import cv2
    import numpy as np

    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.zeros((64, 96, 3), np.uint8))
    return ["run", "--source", str(image), "--model", str(model), "--output", "null", *more]


@pytest.mark.skipif(torch_has_cuda(), reason="torch sees a GPU here: the no-GPU line cannot show")
def test_device_cuda_without_a_gpu_is_one_line_naming_what_is_missing(tmp_path, capsys):
    err = one_line_exit_2(run_argv(tmp_path, CAMVID, "--device", "cuda"), capsys)
    assert err.startswith("bisenet run: error: ") and "CUDA" in err and ("torch" in err or "PyTorch" in err), err


def test_device_cuda_with_an_onnx_says_what_to_use_instead(tmp_path, capsys):
    err = one_line_exit_2(run_argv(tmp_path, tiny_onnx(), "--device", "cuda"), capsys)
    assert "--device cuda runs a zoo name / model YAML" in err and "--providers cuda" in err, err


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "tpu"])
def test_a_device_that_is_not_cpu_or_cuda_is_refused_at_the_flag(tmp_path, capsys, device):
    err = one_line_exit_2(run_argv(tmp_path, tiny_onnx(), "--device", device), capsys)
    assert "--device: " in err and "is not cpu, cuda or cuda:N" in err, err


def test_device_in_a_preset_reaches_the_engine_options(tmp_path):
    preset = tmp_path / "gpu.yaml"
    preset.write_text(f"source: clip.mp4\nmodel: {CAMVID}\ndevice: cuda:0\nthreads: 2\n")
    s = settings.build({}, str(preset))
    assert (s.engine.device, s.engine.threads) == ("cuda:0", 2)


def test_load_model_takes_exactly_the_declared_engine_options():
    keywords = [p.name for p in inspect.signature(bisenet_edge.load_model).parameters.values()][1:]
    assert keywords == list(EngineOptions.model_fields)
    assert {"checkpoint", "device", "providers", "threads", "backend", "precision", "triton_shm",
            "triton_in_flight"} <= set(settings.OPTIONS)
    with pytest.raises(InputError, match=r"load_model\(threads=...\) 0 is out of range"):
        bisenet_edge.load_model(tiny_onnx(), threads=0)
    with pytest.raises(InputError, match=r"load_model\(thread=...\): unknown option"):
        bisenet_edge.load_model(tiny_onnx(), thread=1)


# One new line in the ONNX Runtime engine's own section, in a copy of the code: nothing else
# is edited, and the option is a `bisenet run` flag, a preset key and a load_model keyword.
NEW_DECLARATION = ('    intra_op_spin: Annotated[int | None, Rule(Number(int, 0, 1))] = option(\n'
                   '        None, "ONNX Runtime: let idle threads spin (0 or 1)", group="model")\n')
NEW_IMPORTS = "from typing import Annotated\nfrom core.options import Rule\nfrom core.validate import Number\n"

CHECK = textwrap.dedent("""
    import sys
    from app import run, settings
    from bisenet_edge import load_model
    from core.errors import InputError
    from engines import load

    onnx, preset = sys.argv[1:]
    parser = run._parser()
    assert "--intra-op-spin" in parser.format_help()
    flags = run.resolve(parser.parse_args(["--source", "a.mp4", "--model", onnx, "--intra-op-spin", "1"]))
    from_preset = settings.build({}, preset)
    seen = []
    loader = load.BACKENDS["onnxruntime"]
    load.BACKENDS["onnxruntime"] = lambda model, o: seen.append(o.intra_op_spin) or loader(model, o)
    with load_model(onnx, intra_op_spin=0) as model:
        labels = model.labels(__import__("numpy").zeros((64, 96, 3), "uint8"))
    try:
        load_model(onnx, intra_op_spin=7)
        refused = ""
    except InputError as e:
        refused = str(e)
    print(flags.engine.intra_op_spin, from_preset.engine.intra_op_spin, seen, labels.shape, refused)
""")


def test_one_new_engine_option_declaration_reaches_the_flag_a_preset_key_and_load_model(tmp_path):
    copy = tmp_path / "code"
    for folder in ("app", "core", "engines", "bisenet_edge", "configs", "calibration", "training"):
        shutil.copytree(REPO / folder, copy / folder, ignore=shutil.ignore_patterns("__pycache__"))
    engine_file = copy / "engines" / "onnx_engine.py"
    source = engine_file.read_text()
    anchor = 'group="model")\n'   # the end of the section's last declaration (providers)
    assert source.count("class OnnxRuntimeOptions(Section)") == 1 and source.count(anchor) == 1
    source = source.replace(anchor, anchor + NEW_DECLARATION).replace("from __future__ import annotations\n",
                                                                      "from __future__ import annotations\n"
                                                                      + NEW_IMPORTS, 1)
    engine_file.write_text(source)
    preset = tmp_path / "preset.yaml"
    preset.write_text("source: a.mp4\nmodel: m.onnx\nintra-op-spin: 1\n")
    r = subprocess.run([sys.executable, "-c", CHECK, str(tiny_onnx()), str(preset)], cwd=copy,
                       env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ("1 1 [0] (64, 96) load_model(intra_op_spin=...) 7 is out of range: "
                                "expected a whole number from 0 to 1"), r.stdout
