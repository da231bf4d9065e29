"""Triton Python model for backend `pytorch` (our code, in the layout of tensorrtllm_backend's
`llmapi` model): reads model.yaml next to this file, builds TensorRT-LLM's LLM with its arguments
(the verified checkpoint, no engine), and answers text_input with text_output. Inputs named
sampling_param_<name> become SamplingParams(<name>=...)."""

import os

import numpy as np
import triton_python_backend_utils as pb_utils
import yaml

SAMPLING = {"temperature": float, "top_k": int, "top_p": float, "max_tokens": int, "seed": int}


class TritonPythonModel:
    def initialize(self, args):
        from tensorrt_llm import LLM

        with open(os.path.join(os.path.dirname(__file__), "model.yaml")) as f:
            config = yaml.safe_load(f)
        config.pop("triton_config", None)
        self.llm = LLM(**config)

    def execute(self, requests):
        from tensorrt_llm import SamplingParams

        responses = []
        for request in requests:
            prompts = [t.decode() if isinstance(t, bytes) else str(t) for t in
                       pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy().reshape(-1)]
            params = {}
            for name, kind in SAMPLING.items():
                tensor = pb_utils.get_input_tensor_by_name(request, f"sampling_param_{name}")
                if tensor is not None:
                    params[name] = kind(tensor.as_numpy().reshape(-1)[0])
            results = self.llm.generate(prompts, SamplingParams(**params))
            text = np.array([r.outputs[0].text.encode() for r in results], dtype=object)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("text_output", text)]))
        return responses
