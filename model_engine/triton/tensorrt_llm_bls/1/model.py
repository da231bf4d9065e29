"""Triton Python model (BLS): runs preprocessing -> tensorrt_llm -> postprocessing per request."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

OPTIONAL = {"temperature": "temperature", "top_k": "runtime_top_k", "top_p": "runtime_top_p", "seed": "seed"}


def call(model: str, inputs: list, outputs: list) -> dict:
    response = pb_utils.InferenceRequest(model_name=model, inputs=inputs, requested_output_names=outputs).exec()
    if response.has_error():
        raise pb_utils.TritonModelException(f"{model}: {response.error().message()}")
    return {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in outputs}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.max_output_len = int(config["parameters"]["max_output_len"]["string_value"])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except pb_utils.TritonModelException as e:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e))))
        return responses

    def _one(self, request):
        text = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy()
        max_tokens = pb_utils.get_input_tensor_by_name(request, "max_tokens").as_numpy().astype(np.int32)
        if int(max_tokens.max()) > self.max_output_len:
            raise pb_utils.TritonModelException(f"max_tokens above {self.max_output_len}")
        pre = call("preprocessing", [pb_utils.Tensor("QUERY", text), pb_utils.Tensor("REQUEST_OUTPUT_LEN", max_tokens)],
                   ["INPUT_ID", "REQUEST_INPUT_LEN", "OUT_REQUEST_OUTPUT_LEN", "OUT_END_ID", "OUT_PAD_ID"])
        inputs = [pb_utils.Tensor("input_ids", pre["INPUT_ID"]),
                  pb_utils.Tensor("input_lengths", pre["REQUEST_INPUT_LEN"]),
                  pb_utils.Tensor("request_output_len", pre["OUT_REQUEST_OUTPUT_LEN"]),
                  pb_utils.Tensor("end_id", pre["OUT_END_ID"]),
                  pb_utils.Tensor("pad_id", pre["OUT_PAD_ID"])]
        for ours, theirs in OPTIONAL.items():
            tensor = pb_utils.get_input_tensor_by_name(request, ours)
            if tensor is not None:
                inputs.append(pb_utils.Tensor(theirs, tensor.as_numpy()))
        gen = call("tensorrt_llm", inputs, ["output_ids", "sequence_length"])
        post = call("postprocessing", [pb_utils.Tensor("TOKENS_BATCH", gen["output_ids"]),
                                       pb_utils.Tensor("SEQUENCE_LENGTH", gen["sequence_length"])], ["OUTPUT"])
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("text_output", post["OUTPUT"])])
