"""Triton Python model: generated token ids -> text (runs in the Triton container)."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils
from transformers import AutoTokenizer


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        p = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.tokenizer = AutoTokenizer.from_pretrained(p["tokenizer_dir"], local_files_only=True)
        self.skip_special_tokens = p["skip_special_tokens"].lower() == "true"

    def execute(self, requests):
        responses = []
        for request in requests:
            tokens = pb_utils.get_input_tensor_by_name(request, "TOKENS_BATCH").as_numpy()  # [batch, beam, len]
            lengths = pb_utils.get_input_tensor_by_name(request, "SEQUENCE_LENGTH").as_numpy()  # [batch, beam]
            texts = [[self.tokenizer.decode(tokens[b][k][: lengths[b][k]],
                                            skip_special_tokens=self.skip_special_tokens).encode()
                      for k in range(tokens.shape[1])] for b in range(tokens.shape[0])]
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("OUTPUT", np.array(texts, dtype=object))]))
        return responses
