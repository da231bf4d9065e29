"""Triton Python model: prompt text -> token ids (runs in the Triton container)."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils
from transformers import AutoTokenizer


def parameters(args) -> dict:
    config = json.loads(args["model_config"])
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


class TritonPythonModel:
    def initialize(self, args):
        p = parameters(args)
        self.tokenizer = AutoTokenizer.from_pretrained(p["tokenizer_dir"], local_files_only=True)
        self.add_special_tokens = p["add_special_tokens"].lower() == "true"
        self.max_input_len = int(p["max_input_len"])
        self.end_id = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id
        self.pad_id = self.end_id if pad is None else pad

    def execute(self, requests):
        responses = []
        for request in requests:
            query = pb_utils.get_input_tensor_by_name(request, "QUERY").as_numpy()
            out_len = pb_utils.get_input_tensor_by_name(request, "REQUEST_OUTPUT_LEN").as_numpy()
            ids = [self.tokenizer.encode(q[0].decode(), add_special_tokens=self.add_special_tokens) for q in query]
            if max(len(i) for i in ids) > self.max_input_len:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    f"prompt longer than max_input_len ({self.max_input_len} tokens)")))
                continue
            width = max(len(i) for i in ids)
            padded = np.array([i + [self.pad_id] * (width - len(i)) for i in ids], dtype=np.int32)
            n = len(ids)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("INPUT_ID", padded),
                pb_utils.Tensor("REQUEST_INPUT_LEN", np.array([[len(i)] for i in ids], dtype=np.int32)),
                pb_utils.Tensor("OUT_REQUEST_OUTPUT_LEN", out_len.astype(np.int32)),
                pb_utils.Tensor("OUT_END_ID", np.full((n, 1), self.end_id, dtype=np.int32)),
                pb_utils.Tensor("OUT_PAD_ID", np.full((n, 1), self.pad_id, dtype=np.int32)),
            ]))
        return responses
