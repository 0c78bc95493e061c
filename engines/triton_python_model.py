"""The model.py that `bisenet serve-triton` puts beside model.onnx for Triton's Python backend:
ONNX Runtime or OpenVINO (the config's `runtime` parameter) on the CPU.

It runs inside Triton's Python-backend stub (its own interpreter with the server
environment's packages), so it imports nothing from this project. Triton's dynamic batcher
hands it several requests at once; they are stacked into one batch. A graph with a dynamic
batch dimension runs that batch in one call; a fixed batch-1 export runs it frame by frame
(Triton still batches the requests, the network just does not).
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
            self.batch_dim_dynamic = compiled.input(0).get_partial_shape()[0].is_dynamic
        else:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
            self._run = lambda batch: session.run([self.output_name], {self.input_name: batch})[0]
            first = session.get_inputs()[0].shape[0]
            self.batch_dim_dynamic = not (isinstance(first, int) and first > 0)

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        sizes = [a.shape[0] for a in arrays]
        batch = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
        if self.batch_dim_dynamic:
            out = self._run(batch)
        else:
            out = np.concatenate([self._run(batch[i:i + 1]) for i in range(batch.shape[0])])
        responses, start = [], 0
        for n in sizes:
            tensor = pb_utils.Tensor(self.output_name, np.ascontiguousarray(out[start:start + n]))
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
            start += n
        return responses
