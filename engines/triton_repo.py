"""`bisenet triton-repo`: an exported model -> a Triton Inference Server model repository.

    repo/<name>/config.pbtxt      io names, dtypes and dims read from the model, dynamic
                                  batching, instance group, and the sidecar's metadata in
                                  `parameters` (so a client needs only the URL)
    repo/<name>/1/model.onnx      onnxruntime backend   (from --onnx)
    repo/<name>/1/model.plan      tensorrt backend      (from --engine)

The same config text (with backend "python") is what `bisenet serve-triton` serves, so a
model has one name and one set of metadata wherever Triton runs it. The client side
(engines/triton_engine.py) reads the metadata back with `metadata_from_parameters`.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from core.errors import InputError, MissingFileError, first_line
from core.files import deferred_signals
from core.validate import Number
from core.sidecar import SIDECAR_REQUIRED, SidecarError, check_sidecar, read_sidecar, sidecar_path

HELP = "write a Triton Inference Server model repository (config.pbtxt + model) from an .onnx or .engine"
EXAMPLE = "bisenet triton-repo --onnx artifacts/camvid.onnx --name bisenet --max-batch 8 -o triton_repo/"

# The sidecar keys that travel in the config's `parameters`, each as a JSON string.
PARAMETER_KEYS = SIDECAR_REQUIRED
DEFAULT_QUEUE_DELAY_US = 2000
ONNX_TO_TRITON = {"tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16", "tensor(int32)": "TYPE_INT32",
                  "tensor(int64)": "TYPE_INT64", "tensor(uint8)": "TYPE_UINT8"}


@dataclass
class Tensor:
    name: str
    dtype: str        # Triton TYPE_*
    dims: list        # without the batch dimension when the model batches (-1: any size)


@dataclass
class ModelIO:
    inputs: list
    outputs: list
    batch: int | None    # None: the first dimension is dynamic; else the fixed batch size


def _dims(shape) -> list:
    return [d if isinstance(d, int) and d > 0 else -1 for d in shape]


def onnx_io(path: Path) -> ModelIO:
    """Input/output names, dtypes and shapes of an ONNX graph, read by ONNX Runtime."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:
        first = first_line(e)
        raise InputError(f"ONNX Runtime cannot load {path}: {first}") from None

    def tensors(values):
        out = []
        for v in values:
            if v.type not in ONNX_TO_TRITON:
                raise SidecarError(f"{path}: tensor {v.name} has type {v.type}, which this export does not use; "
                                   "re-export it with `bisenet export`")
            out.append(Tensor(v.name, ONNX_TO_TRITON[v.type], _dims(v.shape)))
        return out

    inputs, outputs = tensors(session.get_inputs()), tensors(session.get_outputs())
    first = inputs[0].dims[0]
    return ModelIO(inputs, outputs, None if first == -1 else first)


def sidecar_io(meta: dict) -> ModelIO:
    """A TensorRT engine's io from its sidecar (TensorRT itself is not needed to write the repo)."""
    n, c, h, w = (int(d) for d in meta["input_shape"])
    head = meta.get("head", "labels")
    out_dims = [n, len(meta["classes"]), h, w] if head == "logits" else [n, h, w]
    out_type = "TYPE_FP32" if head == "logits" else "TYPE_INT32"
    return ModelIO([Tensor(meta.get("input_name", "input"), "TYPE_FP32", [n, c, h, w])],
                   [Tensor(meta.get("output_name", head), out_type, out_dims)], n)


def batching(io: ModelIO, max_batch: int | None, model_path) -> int:
    """Triton's max_batch_size. A dynamic first dimension batches up to max_batch (default 8);
    a fixed one (a static export) cannot be batched by Triton: max_batch_size 0, full dims."""
    if io.batch is None:
        mb = 8 if max_batch is None else max_batch
        if mb < 1:
            raise InputError(f"--max-batch {mb}: {model_path} has a dynamic batch dimension; use 1 or more")
        return mb
    if max_batch not in (None, 0):
        raise InputError(f"--max-batch {max_batch}: {model_path} has a fixed batch of {io.batch}, which Triton "
                         "cannot batch; export with a dynamic batch dimension or pass --max-batch 0")
    return 0


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def config_text(name: str, backend: str, io: ModelIO, max_batch_size: int, meta: dict, *,
                instances: int = 1, kind: str = "KIND_CPU", queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
                default_filename: str | None = None, extra_parameters: dict | None = None) -> str:
    """config.pbtxt text (Triton's ModelConfig in protobuf text format)."""
    def tensor_block(tensors, drop_batch):
        rows = []
        for t in tensors:
            dims = t.dims[1:] if drop_batch else t.dims
            rows.append(f"  {{ name: {_quote(t.name)} data_type: {t.dtype} dims: [ {', '.join(map(str, dims))} ] }}")
        return ",\n".join(rows)

    batched = max_batch_size > 0
    lines = [f"name: {_quote(name)}", f"backend: {_quote(backend)}"]
    if default_filename:
        lines.append(f"default_model_filename: {_quote(default_filename)}")
    lines += [f"max_batch_size: {max_batch_size}",
              f"input [\n{tensor_block(io.inputs, batched)}\n]",
              f"output [\n{tensor_block(io.outputs, batched)}\n]"]
    if batched:
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {int(queue_delay_us)} }}")
    lines.append(f"instance_group [ {{ count: {int(instances)} kind: {kind} }} ]")
    for key in PARAMETER_KEYS:
        value = json.dumps(meta[key], separators=(",", ":"))
        lines.append(f"parameters {{ key: {_quote(key)} value: {{ string_value: {_quote(value)} }} }}")
    for key, value in (extra_parameters or {}).items():
        lines.append(f"parameters {{ key: {_quote(key)} value: {{ string_value: {_quote(str(value))} }} }}")
    return "\n".join(lines) + "\n"


def metadata_from_parameters(parameters: dict, where: str) -> dict:
    """The sidecar dict back from a model config's `parameters` ({key: {"string_value": json}})."""
    missing = [k for k in PARAMETER_KEYS if k not in parameters]
    if missing:
        raise SidecarError(f"{where}: the model config has no {', '.join(missing)} parameters (classes, palette "
                           "and normalization travel there); write its repository with `bisenet triton-repo` "
                           "or serve it with `bisenet serve-triton`")
    hint = "rewrite the repository with `bisenet triton-repo`"
    try:
        meta = {k: json.loads(parameters[k]["string_value"]) for k in PARAMETER_KEYS}
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise SidecarError(f"{where}: unreadable metadata parameter ({e}); {hint}") from None
    try:   # the same schema as a sidecar file
        return check_sidecar(meta, f"{where} parameters", hint)
    except InputError as e:
        raise SidecarError(str(e)) from None


def check_io_matches_sidecar(io: ModelIO, meta: dict, model_path) -> None:
    """The graph and its sidecar must agree on the input size: the client trusts the parameters."""
    _, _, h, w = meta["input_shape"]
    in_hw = io.inputs[0].dims[-2:]
    if -1 not in in_hw and list(in_hw) != [int(h), int(w)]:
        raise SidecarError(f"{model_path}: graph input is {in_hw[0]}x{in_hw[1]} but its sidecar says {h}x{w}; "
                           "re-export it with `bisenet export`")
    if len(io.inputs) != 1 or len(io.outputs) != 1:
        raise SidecarError(f"{model_path}: expected one input and one output, found {len(io.inputs)} and "
                           f"{len(io.outputs)}; re-export it with `bisenet export`")


def write_repository(model_path, out_dir, name: str = "bisenet", *, max_batch: int | None = None,
                     instances: int = 1, kind: str | None = None, queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
                     backend: str | None = None, extra_files: dict | None = None,
                     extra_parameters: dict | None = None) -> Path:
    """Write out_dir/<name>/config.pbtxt and out_dir/<name>/1/<model file>; returns the config path.

    backend None: onnxruntime for .onnx, tensorrt for .engine. serve-triton passes "python"
    with its model.py in extra_files ({file name in 1/: source path}) and the runtime that
    model.py uses in extra_parameters."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise MissingFileError(f"{model_path} does not exist; export one with `bisenet export`")
    if not name or "/" in name or name.startswith("."):
        raise InputError(f"--name {name!r}: use a plain model name such as bisenet")
    if instances < 1:
        raise InputError(f"--instances {instances}: use 1 or more")
    if queue_delay_us < 0:
        raise InputError(f"--max-queue-delay-us {queue_delay_us}: use 0 or more")
    if model_path.suffix == ".onnx":
        meta = read_sidecar(model_path)
        io = onnx_io(model_path)
        backend, filename, kind = backend or "onnxruntime", "model.onnx", kind or "KIND_CPU"
    elif model_path.suffix == ".engine":
        meta = read_sidecar(model_path, rebuild_hint="rebuild it with `bisenet build`")
        io = sidecar_io(meta)
        backend, filename, kind = backend or "tensorrt", "model.plan", kind or "KIND_GPU"
    else:
        raise InputError(f"{model_path}: expected an .onnx (--onnx) or a TensorRT .engine (--engine)")
    check_io_matches_sidecar(io, meta, model_path)
    if backend == "python" and io.batch is not None and max_batch != 0:
        io.batch = None   # serve-triton's model.py runs a fixed batch-N graph in chunks of N (padded)
    mb = batching(io, max_batch, model_path)
    text = config_text(name, backend, io, mb, meta, instances=instances, kind=kind, queue_delay_us=queue_delay_us,
                       default_filename=filename if backend == "tensorrt" else None,
                       extra_parameters=extra_parameters)
    # Written beside its place and renamed there whole: a full disk or a file-size limit leaves
    # the repository as it was (never a truncated model without its config.pbtxt).
    model_dir = Path(out_dir) / name
    staging = Path(out_dir) / f".{name}.{os.getpid()}.tmp"
    old = Path(out_dir) / f".{name}.{os.getpid()}.old"
    try:
        version = staging / "1"
        version.mkdir(parents=True)
        for dest, src in {filename: model_path, filename + ".json": sidecar_path(model_path),
                          **(extra_files or {})}.items():
            shutil.copyfile(src, version / dest)
        (staging / "config.pbtxt").write_text(text)
        with deferred_signals():
            if model_dir.exists():
                model_dir.rename(old)
            staging.rename(model_dir)
    except OSError as e:
        where = e.filename or staging
        raise InputError(f"-o {out_dir}: cannot write {where} ({e.strerror or e}); free space or pick "
                         "another folder") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return model_dir / "config.pbtxt"


# ---------------------------------------------------------------- CLI
# The ranges of the numeric flags below (app/cli.py checks them before run()).
FLAG_RULES = {"max_batch": Number(int, 0, 1024), "instances": Number(int, 1, 64),
              "max_queue_delay_us": Number(int, 0, 10_000_000)}


def add_arguments(p) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--onnx", help="model.onnx with its sidecar (onnxruntime backend)")
    src.add_argument("--engine", help="TensorRT model.engine with its sidecar (tensorrt backend, Triton's "
                     "TensorRT version and GPU must match the build)")
    p.add_argument("--name", default="bisenet",
                   help="model name in the repository and in client URLs (default bisenet)")
    p.add_argument("--max-batch", type=int, help="Triton max_batch_size (default 8 for a dynamic-batch export, "
                   "0 for a fixed batch)")
    p.add_argument("--max-queue-delay-us", type=int, default=DEFAULT_QUEUE_DELAY_US,
                   help=f"dynamic batching: how long a request may wait for others (default {DEFAULT_QUEUE_DELAY_US})")
    p.add_argument("--instances", type=int, default=1, help="model instances per device (default 1)")
    p.add_argument("--kind", choices=("cpu", "gpu"), help="instance kind (default cpu for onnx, gpu for engine)")
    p.add_argument("-o", "--output", required=True, help="repository folder (created; other models in it are kept)")


def run(args) -> int:
    model = args.onnx or args.engine
    if args.onnx and not args.onnx.endswith(".onnx"):
        raise InputError(f"--onnx {args.onnx}: expected a .onnx file")
    if args.engine and not args.engine.endswith(".engine"):
        raise InputError(f"--engine {args.engine}: expected a TensorRT .engine file")
    config = write_repository(model, args.output, args.name, max_batch=args.max_batch, instances=args.instances,
                              kind=f"KIND_{args.kind.upper()}" if args.kind else None,
                              queue_delay_us=args.max_queue_delay_us)
    print(f"wrote {config} and {config.parent / '1'}/; serve it with tritonserver --model-repository "
          f"{Path(args.output).resolve()} (docs/triton.md)", file=sys.stderr)
    return 0
