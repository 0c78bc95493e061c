"""A remote engine: the model runs on a Triton Inference Server, reached over gRPC or HTTP.

    --model grpc://HOST:8001/bisenet      (or http://HOST:8000/bisenet)

Everything the app needs to know about the model (classes, palette, normalization, input
size, head) comes from the server: the model's config `parameters` written by `bisenet
triton-repo` / `bisenet serve-triton`, checked against the config's own io shapes.

- Up to `in_flight` requests at once (`submit` returns a Future), so the network and the
  server overlap capture and overlay; each worker thread has its own client (tritonclient
  clients are not shared between threads).
- `shm="system"`: inputs and outputs travel through POSIX shared memory regions registered
  with the server (same host only), one input and one output region per in-flight slot.
  `shm="cuda"`: CUDA shared memory regions through tritonclient's cuda_shared_memory
  (needs a GPU; UNVERIFIED: it has not run in this project's checks, no GPU was available).
- Server down or restarted: a failed request whose server is not ready raises `ServerDown`
  (the pipeline drops that frame with reason `server_down`); later requests fail at once
  until a probe, retried with exponential backoff, finds the model ready again; then the
  regions are registered again and frames flow. `counters()` reports the outages.
"""
from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Annotated
from urllib.parse import urlsplit

import numpy as np

from engines.base import Engine, ModelInfo, ServerDown, labels_from, pad_batch, run_static_batch
from core.backoff import Backoff
from core.errors import InputError, SetupError, first_line
from core.install_hint import extra_hint
from core.sidecar import SidecarError
from core.options import OneOf, Rule, Section, option
from core.validate import Number
from engines.triton_repo import metadata_from_parameters


class TritonOptions(Section):
    """A Triton server's client options (flags of `bisenet run`, load_model keywords)."""
    triton_shm: Annotated[str, Rule(OneOf(("none", "system", "cuda")))] = option(
        "none", "Triton: pass tensors through shared memory, server on this host (default none; cuda is unverified)",
        group="model")
    triton_in_flight: Annotated[int, Rule(Number(int, 1, 64, hint="each request in flight holds one frame"))] = option(
        2, "Triton: requests in flight at once (default 2)", group="model", metavar="K")

SCHEMES = ("grpc", "http")
TRITON_TO_NP = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_INT32": np.int32, "TYPE_INT64": np.int64,
                "TYPE_UINT8": np.uint8}
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.25, 4.0
PROBE_TIMEOUT_S = 2.0     # a readiness probe during an outage: short, it runs in the inference thread


def is_triton_url(model: str) -> bool:
    return str(model).split("://", 1)[0] in SCHEMES and "://" in str(model)


def parse_url(url: str) -> tuple:
    """'grpc://host:8001/bisenet' -> ('grpc', 'host:8001', 'bisenet')."""
    parts = urlsplit(url)
    name = parts.path.strip("/")
    if parts.scheme not in SCHEMES or not parts.hostname or not parts.port or not name or "/" in name:
        raise InputError(f"--model {url}: write a Triton model as grpc://HOST:PORT/NAME or http://HOST:PORT/NAME "
                         "(e.g. grpc://127.0.0.1:8001/bisenet)")
    return parts.scheme, parts.netloc, name


def _import_client(protocol: str):
    try:
        if protocol == "grpc":
            import tritonclient.grpc as client
        else:
            import tritonclient.http as client
    except ImportError:
        raise ImportError(f"--model {protocol}://...: tritonclient is not installed; "
                          + extra_hint("triton", "'tritonclient[grpc,http]'")) from None
    return client


class SystemRegion:
    """One POSIX shared memory region registered with the server (tritonclient.utils.shared_memory)."""

    def __init__(self, name: str, size: int):
        import tritonclient.utils.shared_memory as shm

        self.shm, self.name, self.size = shm, name, size
        self.handle = shm.create_shared_memory_region(name, "/" + name, size)

    def register(self, client) -> None:
        client.register_system_shared_memory(self.name, "/" + self.name, self.size)

    def unregister(self, client) -> None:
        client.unregister_system_shared_memory(self.name)

    def write(self, array: np.ndarray) -> None:
        self.shm.set_shared_memory_region(self.handle, [np.ascontiguousarray(array)])

    def read(self, dtype, shape) -> np.ndarray:
        return np.array(self.shm.get_contents_as_numpy(self.handle, dtype, shape))   # copy: the slot is reused

    def destroy(self) -> None:
        self.shm.destroy_shared_memory_region(self.handle)


class CudaRegion(SystemRegion):
    """UNVERIFIED (no GPU in this project's checks): the same slot in CUDA memory on device 0."""

    def __init__(self, name: str, size: int, device: int = 0):
        self.shm, self.name, self.size, self.device = self.module(), name, size, device
        self.handle = self.shm.create_shared_memory_region(name, size, device)

    @staticmethod
    def module():
        try:
            import tritonclient.utils.cuda_shared_memory as cshm
        except (ImportError, RuntimeError):   # tritonclient raises RuntimeError without cuda-python
            raise SetupError("--triton-shm cuda needs cuda-python: pip install 'tritonclient[cuda]' on a machine "
                               "with an NVIDIA GPU (or use --triton-shm system)") from None
        return cshm

    def register(self, client) -> None:
        client.register_cuda_shared_memory(self.name, self.shm.get_raw_handle(self.handle), self.device, self.size)

    def unregister(self, client) -> None:
        client.unregister_cuda_shared_memory(self.name)


class TritonEngine(Engine):
    backend = "triton"
    asynchronous = True    # submit() -> Future; several requests in flight

    def __init__(self, url: str, shm: str = "none", in_flight: int = 2, timeout_s: float = 10.0, log=None):
        self.protocol, self.host, self.model_name = parse_url(url)
        self.url, self.name = url, f"triton {url}"
        if shm not in ("none", "system", "cuda"):
            raise InputError(f"--triton-shm {shm!r}: use none, system or cuda")
        if in_flight < 1:
            raise InputError(f"--triton-in-flight {in_flight}: use 1 or more")
        self.shm, self.in_flight, self.timeout_s = shm, in_flight, timeout_s
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.client_mod = _import_client(self.protocol)
        self._local = threading.local()
        self._generation = 0          # bumped after an outage: worker threads make new clients
        self._lock = threading.Lock()
        self._down_since = None       # monotonic time the current outage began
        self._next_probe = 0.0
        self._backoff = Backoff(BACKOFF_FIRST_S, BACKOFF_MAX_S)   # between probes during an outage
        self.outages, self.outage_s = 0, 0.0
        self.regions = []
        client = self._new_client()
        try:
            live = client.is_server_live()
        except Exception as e:
            raise SetupError(f"cannot reach Triton at {self.protocol}://{self.host} ({first_line(e)}); start it "
                               "(bisenet serve-triton, docs/triton.md) or check HOST:PORT in --model") from None
        if not live:
            raise SetupError(f"Triton at {self.protocol}://{self.host} is not live yet; try again when it is")
        self._read_model(client)
        if shm != "none":
            self._make_regions(client)
        self._pool = ThreadPoolExecutor(in_flight, thread_name_prefix="triton")
        self._slots = list(range(in_flight))
        self._free = threading.Semaphore(in_flight)

    # ---- setup ---------------------------------------------------------------------------
    def _new_client(self, timeout_s: float | None = None):
        if self.protocol == "grpc":
            return self.client_mod.InferenceServerClient(self.host)
        timeout_s = timeout_s or self.timeout_s
        return self.client_mod.InferenceServerClient(self.host, connection_timeout=timeout_s,
                                                     network_timeout=timeout_s)

    def _client(self):
        """This thread's client, renewed after an outage (a gRPC channel may sit in backoff)."""
        if getattr(self._local, "generation", None) != self._generation:
            old = getattr(self._local, "client", None)
            if old is not None:
                try:
                    old.close()
                except Exception:
                    pass
            self._local.client, self._local.generation = self._new_client(), self._generation
        return self._local.client

    def _json(self, call, *args):
        return call(*args, as_json=True) if self.protocol == "grpc" else call(*args)

    def _read_model(self, client) -> None:
        where = f"{self.protocol}://{self.host}/{self.model_name}"
        if not client.is_model_ready(self.model_name):
            try:
                index = self._json(client.get_model_repository_index)
                index = index.get("models", []) if isinstance(index, dict) else index
                ready = sorted(m["name"] for m in index if m.get("state") == "READY")
            except Exception:
                ready = []
            raise InputError(f"Triton at {self.protocol}://{self.host} has no ready model {self.model_name!r} "
                             f"(ready: {', '.join(ready) or 'none'}); fix the name in --model")
        config = self._json(client.get_model_config, self.model_name)
        config = config.get("config", config)
        meta = metadata_from_parameters(config.get("parameters", {}), where)
        self.info = ModelInfo.from_sidecar(meta)
        inputs, outputs = config.get("input", []), config.get("output", [])
        if len(inputs) != 1 or len(outputs) != 1:
            raise SidecarError(f"{where}: expected one input and one output, the server has {len(inputs)} and "
                               f"{len(outputs)}; serve a `bisenet export` model")
        inp, out = inputs[0], outputs[0]
        self.max_batch = int(config.get("max_batch_size", 0))
        dims = [int(d) for d in inp["dims"]]
        self.input_dims = dims if self.max_batch else dims[1:]      # [3, H, W]
        self.fixed_batch = None if self.max_batch else dims[0]
        h, w = self.info.input_size
        if len(self.input_dims) != 3 or self.input_dims[0] != 3:
            raise SidecarError(f"{where}: input {inp['name']} has dims {dims}; expected 3 channels x H x W")
        model_hw = self.input_dims[1:]
        self.info.dynamic = -1 in model_hw
        if not self.info.dynamic and model_hw != [h, w]:
            raise SidecarError(f"{where}: input is {model_hw[0]}x{model_hw[1]} but the model's parameters say {h}x{w}; "
                               "rewrite the repository with `bisenet triton-repo`")
        dtype = inp.get("data_type", "TYPE_FP32")
        if dtype not in ("TYPE_FP32", "TYPE_FP16"):
            raise SidecarError(f"{where}: input type {dtype}; the preprocess writes float32 or float16")
        self.input_dtype = TRITON_TO_NP[dtype]
        self.input_name, self.output_name = inp["name"], out["name"]
        if self.output_name not in ("labels", "logits") or self.output_name != self.info.head:
            raise SidecarError(f"{where}: output {self.output_name!r} but the parameters say head {self.info.head}; "
                               "serve a `bisenet export` model")
        self.output_dtype = TRITON_TO_NP.get(out.get("data_type", "TYPE_INT32"), np.int32)
        self.info.extra["triton_url"] = self.url

    def _make_regions(self, client) -> None:
        if self.info.dynamic:
            raise InputError("--triton-shm needs a model with a fixed input size; this one takes any H x W")
        frames = self.max_batch or self.fixed_batch
        h, w = self.info.input_size
        out_per_frame = (self.info.num_classes if self.output_name == "logits" else 1) * h * w
        self.in_bytes = frames * 3 * h * w * np.dtype(self.input_dtype).itemsize
        self.out_bytes = frames * out_per_frame * np.dtype(self.output_dtype).itemsize
        region = CudaRegion if self.shm == "cuda" else SystemRegion
        if region is CudaRegion:
            CudaRegion.module()   # a missing package is its own one-line error
        tag = f"bisenet_{threading.get_native_id()}_{id(self) & 0xffffff:x}"
        try:
            for slot in range(self.in_flight):
                self.regions.append((region(f"{tag}_{slot}_in", self.in_bytes),
                                     region(f"{tag}_{slot}_out", self.out_bytes)))
            self._register(client)
        except Exception as e:
            self._destroy_regions(client)
            raise SetupError(f"--triton-shm {self.shm}: cannot set up shared memory with Triton at {self.host} "
                               f"({first_line(e)}); shared memory needs the server on this host") from None

    def _register(self, client) -> None:
        for pair in self.regions:
            for r in pair:
                try:
                    r.unregister(client)   # a restarted server has forgotten it; a live one must let go first
                except Exception:
                    pass
                r.register(client)

    def _destroy_regions(self, client) -> None:
        for pair in self.regions:
            for r in pair:
                if client is not None:
                    try:
                        r.unregister(client)
                    except Exception:
                        pass
                r.destroy()
        self.regions = []

    # ---- inference -----------------------------------------------------------------------
    def submit(self, batch: np.ndarray) -> Future:
        """Send one request; the Future's result is the output (labels or logits). Blocks while
        `in_flight` requests are outstanding; raises ServerDown at once during an outage. A
        fixed-batch model (max_batch_size 0, dims [N, 3, H, W]) takes 1..N frames: the request
        is padded with zeros to N and the Future gives only the frames sent."""
        self._check_batch(batch, chunks=False)
        self._wait_for_server()
        self._free.acquire()
        with self._lock:
            slot = self._slots.pop()
        try:
            return self._pool.submit(self._request, batch, slot)
        except BaseException:
            self._release(slot)
            raise

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.labels_of(self._output(batch))

    def infer_logits(self, batch: np.ndarray) -> np.ndarray:
        if self.output_name != "logits":
            return super().infer_logits(batch)
        return self._output(batch)

    def _output(self, batch: np.ndarray) -> np.ndarray:
        """The output for any number of frames (eval): a fixed-batch model takes them in
        requests of its N frames, the last one padded (as the local engines' run_static_batch)."""
        if self.fixed_batch and len(batch) > self.fixed_batch:
            self._check_batch(batch)
            return run_static_batch(lambda part: self.submit(part).result(), batch, self.fixed_batch)
        return self.submit(batch).result()

    def batch_limit(self, cameras: int) -> int:
        """Frames per request when `cameras` cameras share this engine: one per camera, up to the
        server model's max_batch_size (Triton's dynamic batcher then merges requests of several
        edge processes too); a fixed-batch model (max_batch_size 0) up to its N frames, padded."""
        return max(1, min(cameras, self.max_batch or self.fixed_batch))

    def labels_of(self, output: np.ndarray) -> np.ndarray:
        """What submit's Future gives -> labels (the pipeline calls this on the result)."""
        return labels_from(output, self.output_name)

    def _check_batch(self, batch: np.ndarray, chunks: bool = True) -> None:
        """chunks: more frames than a fixed-batch model's N are allowed (infer sends them in N-frame
        requests); one request (submit) takes at most N."""
        n = batch.shape[0]
        if n < 1:
            raise ValueError(f"an empty batch for Triton model {self.model_name}: send 1 frame or more")
        if self.max_batch and n > self.max_batch:
            raise ValueError(f"a batch of {n} frames but Triton model {self.model_name} takes at most "
                             f"{self.max_batch} (max_batch_size); send fewer or raise --max-batch on the server")
        if not self.max_batch and n > self.fixed_batch and not chunks:
            raise ValueError(f"a request of {n} frames but Triton model {self.model_name} has a fixed batch of "
                             f"{self.fixed_batch}; send at most {self.fixed_batch} (fewer are padded)")
        want = self.input_dims[1:]
        if list(batch.shape[1:2]) != [3] or any(d not in (-1, s) for d, s in zip(want, batch.shape[2:])):
            raise ValueError(f"input {list(batch.shape)} does not fit Triton model {self.model_name} "
                             f"(N x {' x '.join(map(str, self.input_dims))})")

    def _request(self, batch: np.ndarray, slot: int) -> np.ndarray:
        client = self._client()
        mod = self.client_mod
        frames = len(batch)
        try:
            data = np.ascontiguousarray(batch, dtype=self.input_dtype)
            if self.fixed_batch:   # the model's own dims: pad with zeros, trim below
                data = pad_batch(data, self.fixed_batch)
            dtype = "FP16" if self.input_dtype == np.float16 else "FP32"
            inp = mod.InferInput(self.input_name, list(data.shape), dtype)
            out = mod.InferRequestedOutput(self.output_name)
            if self.regions:
                region_in, region_out = self.regions[slot]
                region_in.write(data)
                inp.set_shared_memory(region_in.name, data.nbytes)
                out.set_shared_memory(region_out.name, self.out_bytes)
            elif self.protocol == "http":
                inp.set_data_from_numpy(data, binary_data=True)
                out = mod.InferRequestedOutput(self.output_name, binary_data=True)
            else:
                inp.set_data_from_numpy(data)
            kwargs = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
            try:
                result = client.infer(self.model_name, [inp], outputs=[out], **kwargs)
            except Exception as e:
                # A server restarted between two requests is up but has forgotten our shared
                # memory regions: handle it as an outage too (the recovery registers them again).
                forgot = bool(self.regions) and "shared memory" in str(e).lower()
                if forgot or self._server_is_down():
                    self._mark_down(e)
                    raise ServerDown(f"Triton at {self.host} is down: {first_line(e)}") from None
                raise RuntimeError(f"Triton inference failed: {first_line(e)}") from None
            if self.regions:
                # (grpc's get_output(as_json=True) returns None in tritonclient 2.73: read the message)
                shape = result.get_output(self.output_name)
                shape = [int(d) for d in (shape.shape if self.protocol == "grpc" else shape["shape"])]
                return region_out.read(self.output_dtype, shape)[:frames]
            return result.as_numpy(self.output_name)[:frames]
        finally:
            self._release(slot)

    def _release(self, slot: int) -> None:
        with self._lock:
            self._slots.append(slot)
        self._free.release()

    # ---- outages -------------------------------------------------------------------------
    def _probe(self) -> bool:
        """A fresh client asks whether the model is ready (a short, bounded call)."""
        try:
            client = self._new_client(PROBE_TIMEOUT_S)
            try:
                if self.protocol == "grpc":
                    return bool(client.is_server_ready(client_timeout=PROBE_TIMEOUT_S)
                                and client.is_model_ready(self.model_name, client_timeout=PROBE_TIMEOUT_S))
                return bool(client.is_server_ready() and client.is_model_ready(self.model_name))
            finally:
                client.close()
        except Exception:
            return False

    def _server_is_down(self) -> bool:
        return self._down_since is not None or not self._probe()

    def _mark_down(self, error: Exception) -> None:
        with self._lock:
            if self._down_since is not None:
                return
            self._down_since = time.monotonic()
            self.outages += 1
            self._backoff.reset()
            self._next_probe = self._down_since + self._backoff.next()
        self.log(f"warning: Triton at {self.host} is down ({first_line(error)}): dropping frames (server_down), "
                 "retrying with backoff")

    def _wait_for_server(self) -> None:
        """During an outage: raise ServerDown until a probe (every 0.25 s, doubling to 4 s) succeeds."""
        with self._lock:
            if self._down_since is None:
                return
            now = time.monotonic()
            if now < self._next_probe:
                raise ServerDown(f"Triton at {self.host} is down")
            self._next_probe = now + 3600.0   # one prober at a time
        ok = self._probe()
        if ok and self.regions:
            try:
                client = self._new_client()
                self._register(client)
                client.close()
            except Exception:
                ok = False
        with self._lock:
            now = time.monotonic()
            if not ok:
                self._next_probe = now + self._backoff.next()
                raise ServerDown(f"Triton at {self.host} is down")
            down_for = now - self._down_since
            self.outage_s += down_for
            self._down_since = None
            self._generation += 1
        self.log(f"Triton at {self.host} is back after {down_for:.1f} s; frames flow again")

    def counters(self) -> dict:
        return {"outages": self.outages, "outage_s": round(self.outage_s, 1)} if self.outages else {}

    def close(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=True)
        if self.regions:
            try:
                client = self._new_client()
            except Exception:
                client = None
            self._destroy_regions(client)

    def describe(self) -> str:
        h, w = self.info.input_size
        shm = f", {self.shm} shared memory" if self.shm != "none" else ""
        return (f"triton {self.url} ({self.info.model} {self.info.precision} input {h}x{w} head={self.info.head}, "
                f"max batch {self.max_batch}, {self.in_flight} in flight{shm})")
