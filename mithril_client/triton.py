"""The `llm` app's inference endpoint (Triton's generate extension), over an attested session."""

from __future__ import annotations

from .errors import BadInput
from .session import AttestedSession


def generate(session: AttestedSession, prompt: str, *, max_tokens: int = 128, model: str = "ensemble",
             **parameters) -> str:
    """POST /v2/models/<model>/generate; returns `text_output`. Backend tensorrt-engine serves the
    `ensemble` ({"text_input", "max_tokens", …}); backend pytorch serves one `tensorrt_llm` model in
    the llmapi layout, whose inputs are sampling_param_<name>. Extra keyword arguments
    (temperature, top_k, …) are sent under the name that model reads."""
    prefix = "sampling_param_" if model == "tensorrt_llm" else ""
    body = {"text_input": prompt, **{prefix + k: v for k, v in {"max_tokens": max_tokens, **parameters}.items()}}
    resp = session.post(f"/v2/models/{model}/generate", json=body)
    where = f"https://{session.host}:{session.port}/v2/models/{model}/generate"
    if resp.status != 200:
        raise BadInput(where, f"HTTP {resp.status}: {resp.text[:300]}")
    try:
        return resp.json()["text_output"]
    except (ValueError, KeyError, TypeError):
        raise BadInput(where, "the answer has no text_output") from None
