"""`bisenet export`: checkpoint -> ONNX (+ sidecar JSON). Build time: torch lives here.

Graph contract (what ONNX Runtime, TensorRT and the app rely on):
- input  `input`:  float32 [N, 3, H, W], RGB normalized with the config's mean/std
- output `logits`: float32 [N, C, H, W] (bilinear, align_corners=False, as mmseg 'whole'), or
         `labels`: int32   [N, H, W]   (ArgMax in the graph, then Cast to int32: TensorRT
         has no int64 I/O on 8.6 and ONNX Runtime takes int32 as well)
  N is 1 by default, `--batch N` for a static batch (the app batches N cameras' frames), or
  any (`--dynamic-batch`, axis named "batch"); the sidecar records it (input_shape[0],
  dynamic_batch, max_batch).
- opset 17, auxiliary heads dropped, graph simplified with onnxslim when installed.
- `--precision fp16`: the same float32 input and outputs; weights and activations float16
  inside (Cast at both ends). TensorRT 11 builds only strongly typed networks: this is its
  fp16 route (`bisenet build --precision fp16` on this file).
"""
from __future__ import annotations

import datetime
import sys
from pathlib import Path

from typing import Annotated

from core import options
from core.options import OneOf, Rule, Section, Switch, Text, option
from core.validate import Number, prepare_output
from core.model_config import ConfigError, ModelConfig, load_model_config
from core.files import atomic_path, file_sha256
from core.sidecar import write_sidecar

HELP = "export a BiSeNetV1 checkpoint (official mmseg or own) to ONNX with a sidecar JSON"
EXAMPLE = ("bisenet export --model bisenetv1_r18-d32_4xb4-160k_cityscapes-1024x1024 "
           "--checkpoint r18.pth --size 512x1024 --head labels -o r18.onnx")
OPSET = 17
PRECISIONS = ("fp32", "fp16")


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size {text!r}: write it as HxW, e.g. 512x1024") from None
    if h <= 0 or w <= 0 or h % 32 or w % 32:
        raise ConfigError(f"--size {text}: H and W must be positive multiples of 32 (BiSeNetV1 downsamples "
                          f"by 32), e.g. {max(32, round(h / 32) * 32)}x{max(32, round(w / 32) * 32)}")
    return h, w


def build_model(cfg: ModelConfig, checkpoint: str | Path | None, random_init: bool = False):
    """Eval-mode BiSeNetV1 without auxiliary heads and the checkpoint's meta."""
    from training.checkpoints import load_weights, resolve_checkpoint
    from training.model import BiSeNetV1

    model = BiSeNetV1(cfg, with_aux=False)
    meta, path = {}, None
    if random_init:
        if checkpoint:
            raise ConfigError("pass either --checkpoint or --random-init, not both")
    else:
        path = resolve_checkpoint(cfg, checkpoint)
        meta = load_weights(model, path, cfg)
    return model.eval(), meta, path


def export_onnx(cfg: ModelConfig, checkpoint, out_path, size_hw=None, head: str = "labels",
                dynamic: bool = False, random_init: bool = False, simplify: bool = True,
                precision: str = "fp32", batch: int = 1, dynamic_batch: bool = False) -> Path:
    """`batch`: the graph's static batch; with `dynamic_batch` the graph takes any batch and
    `batch` (when > 1) is recorded as the most frames the app should put in one."""
    import torch

    if head not in ("labels", "logits"):
        raise ConfigError(f"--head {head!r}: use labels or logits")
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r}: use fp32 or fp16")
    if int(batch) < 1:
        raise ConfigError(f"--batch {batch}: must be 1 or more")
    h, w = size_hw or tuple(cfg.crop_size)
    if h % 32 or w % 32:
        raise ConfigError(f"size {h}x{w}: H and W must be multiples of 32")
    model, _, ckpt_path = build_model(cfg, checkpoint, random_init)
    half = precision == "fp16"

    class Exported(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net.half() if half else net

        def forward(self, x):
            logits = self.net(x.half()).float() if half else self.net(x)   # fp16 inside, float32 I/O
            return logits if head == "logits" else torch.argmax(logits, dim=1).to(torch.int32)

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    graph_batch = 1 if dynamic_batch else int(batch)
    dummy = torch.zeros(graph_batch, 3, h, w)
    dynamic_axes = {"input": {}, head: {}}
    if dynamic:
        dynamic_axes = {"input": {2: "height", 3: "width"},
                        head: ({2: "height", 3: "width"} if head == "logits" else {1: "height", 2: "width"})}
    if dynamic_batch:
        dynamic_axes["input"][0] = dynamic_axes[head][0] = "batch"
    # Through a hidden temp file: an interrupted export (an exception, Ctrl-C, SIGTERM) leaves
    # neither half a model nor the temp file behind, and the model lands with its sidecar.
    meta = {}
    with atomic_path(out_path, then=lambda: write_sidecar(out_path, meta)) as tmp, torch.no_grad():
        # The TorchScript exporter: it maps this network to plain ONNX ops in one step and
        # supports dynamic H/W through dynamic_axes.
        torch.onnx.export(Exported(model), (dummy,), str(tmp), input_names=["input"], output_names=[head],
                          opset_version=OPSET, dynamo=False, do_constant_folding=True,
                          dynamic_axes=dynamic_axes if dynamic or dynamic_batch else None)
        if simplify:
            _simplify(tmp)
        meta.update({
            "model": cfg.name, "classes": list(cfg.class_names), "palette": [list(p) for p in cfg.palette],
            "mean": list(cfg.mean), "std": list(cfg.std), "input_shape": [graph_batch, 3, h, w], "input_name": "input",
            "input_layout": "NCHW float32 RGB normalized", "output_name": head, "head": head,
            "labels_dtype": "int32", "dynamic": bool(dynamic), "dynamic_batch": bool(dynamic_batch),
            "max_batch": int(batch) if dynamic_batch and int(batch) > 1 else None, "precision": precision, "opset": OPSET,
            "source_checkpoint": str(ckpt_path) if ckpt_path else "random-init",
            "source_checkpoint_sha256": file_sha256(ckpt_path) if ckpt_path else None,
            "onnx_sha256": file_sha256(tmp), "model_config": cfg.to_dict(),
            "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch_version": torch.__version__,
        })
    return out_path


def _simplify(path: Path) -> None:
    try:
        import onnx
        import onnxslim
    except ImportError:
        print("note: onnxslim not installed, graph left unsimplified (pip install onnxslim)", file=sys.stderr)
        return
    model = onnxslim.slim(onnx.load(str(path)))
    onnx.save(model, str(path))


class ExportFlags(Section):
    """`bisenet export`'s options, each declared once."""
    model: Text = option(None, "zoo name (see `bisenet models`) or a model YAML path", required=True)
    checkpoint: Text = option(None, "official mmseg .pth or own checkpoint; omitted: download the official one")
    size: Text = option(None, "input HxW, multiples of 32 (default: the config's crop size)")
    head: Annotated[str, Rule(OneOf(("labels", "logits")))] = option(
        "labels", "output int32 labels (argmax in the graph) or float32 logits")
    dynamic: Switch = option(False, "dynamic input height/width", action="store_true")
    precision: Annotated[str, Rule(OneOf(PRECISIONS))] = option(
        "fp32", "fp16: float16 weights and activations, float32 input/output (TensorRT 11's fp16 route)")
    batch: Annotated[int, Rule(Number(int, 1, 1024, hint="frames per inference (cameras batched together)"))] = \
        option(1, "frames per inference: a static batch of N (the app batches N cameras; default 1); with "
               "--dynamic-batch the most frames the app puts in one batch", metavar="N")
    dynamic_batch: Switch = option(False, "a graph that takes any batch size (multi-camera runs batch what is "
                                   "ready)", action="store_true")
    random_init: Switch = option(False, "random weights (tests only)", action="store_true")
    no_simplify: Switch = option(False, "skip onnxslim", action="store_true")
    output: Text = option(None, "output .onnx path (sidecar written beside it)", short="-o", required=True)


OPTIONS = (ExportFlags,)   # checked by app/cli.py before run()


def add_arguments(p):
    options.add_arguments(p, OPTIONS, suppress=False)


def run(args) -> int:
    cfg = load_model_config(args.model)
    size = parse_size(args.size) if args.size else None
    if not args.output.endswith(".onnx"):
        raise ConfigError(f"-o {args.output}: the output file must end in .onnx")
    prepare_output(args.output, "-o")   # before minutes of work: can it be written at all?
    out = export_onnx(cfg, args.checkpoint, args.output, size, args.head, args.dynamic, args.random_init,
                      simplify=not args.no_simplify, precision=args.precision, batch=args.batch,
                      dynamic_batch=args.dynamic_batch)
    h, w = size or cfg.crop_size
    batch = f", batch {'dynamic' if args.dynamic_batch else args.batch}" if args.dynamic_batch or args.batch > 1 else ""
    print(f"exported {cfg.name} ({h}x{w}, head={args.head}, {args.precision}{batch}) -> {out} (+ {out.name}.json)")
    return 0
