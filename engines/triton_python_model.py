"""The model.py that `bisenet serve-triton` puts beside model.onnx for Triton's Python backend:
ONNX Runtime or OpenVINO (the config's `runtime` parameter) on the CPU.

It runs inside Triton's Python-backend stub (its own interpreter with the server
environment's packages), so it imports nothing from this project. Triton's dynamic batcher
hands it several requests at once; they are stacked into one batch. A graph with a dynamic
batch dimension runs that batch in one call; a fixed batch-N export runs it in chunks of N,
the last one padded with zeros (Triton still batches the requests, the network takes N at a
time). Served with max_batch_size 0 (`serve-triton --max-batch 0`) each request is one
[N, 3, H, W] tensor, as Triton's onnxruntime backend would take it.
"""
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        folder = os.path.join(args["model_repository"], args["model_version"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = os.path.join(folder, "model.onnx")
        if params.get("runtime") == "openvino":
            import openvino as ov

            # fp32 precision hint, as the app's OpenVINO engine (the CPU plugin's default may be bf16)
            compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                             "PERFORMANCE_HINT": "LATENCY"})
            self._run = lambda batch: compiled(batch)[0]
            first = compiled.input(0).get_partial_shape()[0]
            self.fixed_batch = None if first.is_dynamic else first.get_length()
        else:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
            self._run = lambda batch: session.run([self.output_name], {self.input_name: batch})[0]
            first = session.get_inputs()[0].shape[0]
            self.fixed_batch = first if isinstance(first, int) and first > 0 else None

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        sizes = [a.shape[0] for a in arrays]
        batch = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
        out = self._run(batch) if self.fixed_batch in (None, len(batch)) else self._run_chunks(batch)
        responses, start = [], 0
        for n in sizes:
            tensor = pb_utils.Tensor(self.output_name, np.ascontiguousarray(out[start:start + n]))
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
            start += n
        return responses

    def _run_chunks(self, batch):
        """A fixed batch-N graph over any number of frames: chunks of N, the last padded with
        zeros and its padding's outputs dropped (engines/base.py run_static_batch does the same
        in the app; this file runs inside Triton and imports nothing from the project)."""
        size, outs = self.fixed_batch, []
        for i in range(0, len(batch), size):
            part = batch[i:i + size]
            if len(part) < size:
                part = np.concatenate([part, np.zeros((size - len(part), *part.shape[1:]), part.dtype)])
            outs.append(self._run(part)[:min(size, len(batch) - i)])
        return np.concatenate(outs)
