"""Triton Python model for backend `pytorch`: serves the pinned Hugging Face checkpoint with
TensorRT-LLM's LLM API (TRT-LLM >= 1.2, no engine build). Copied to tensorrt_llm/1/model.py only
for that backend; same inputs and outputs as the C++ tensorrtllm backend."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


def optional(request, name, default):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return default if tensor is None else tensor.as_numpy()


class TritonPythonModel:
    def initialize(self, args):
        from tensorrt_llm import LLM
        from tensorrt_llm.llmapi import KvCacheConfig

        config = json.loads(args["model_config"])
        p = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.llm = LLM(model=p["gpt_model_path"], tensor_parallel_size=int(p["tensor_parallel_size"]),
                       kv_cache_config=KvCacheConfig(free_gpu_memory_fraction=float(p["kv_cache_free_gpu_mem_fraction"])))

    def execute(self, requests):
        from tensorrt_llm import SamplingParams

        responses = []
        for request in requests:
            ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy()
            lengths = pb_utils.get_input_tensor_by_name(request, "input_lengths").as_numpy().reshape(-1)
            out_len = pb_utils.get_input_tensor_by_name(request, "request_output_len").as_numpy().reshape(-1)
            end_id = optional(request, "end_id", None)
            pad_id = optional(request, "pad_id", None)
            temperature = optional(request, "temperature", None)
            top_k = optional(request, "runtime_top_k", None)
            top_p = optional(request, "runtime_top_p", None)
            seed = optional(request, "seed", None)
            prompts, params = [], []
            for b in range(ids.shape[0]):
                prompts.append(ids[b][: lengths[b]].tolist())
                params.append(SamplingParams(
                    max_tokens=int(out_len[b]),
                    end_id=None if end_id is None else int(end_id.reshape(-1)[b]),
                    pad_id=None if pad_id is None else int(pad_id.reshape(-1)[b]),
                    temperature=None if temperature is None else float(temperature.reshape(-1)[b]),
                    top_k=None if top_k is None else int(top_k.reshape(-1)[b]),
                    top_p=None if top_p is None else float(top_p.reshape(-1)[b]),
                    seed=None if seed is None else int(seed.reshape(-1)[b])))
            results = self.llm.generate(prompts, params)
            tokens = [list(r.outputs[0].token_ids) for r in results]
            width = max(1, max(len(t) for t in tokens))
            pad = 0 if pad_id is None else int(pad_id.reshape(-1)[0])
            output_ids = np.array([[t + [pad] * (width - len(t))] for t in tokens], dtype=np.int32)
            seq_len = np.array([[len(t)] for t in tokens], dtype=np.int32)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("output_ids", output_ids), pb_utils.Tensor("sequence_length", seq_len)]))
        return responses
