"""The `llm` app's inference endpoint (Triton's generate extension), over an attested session."""

from __future__ import annotations

from .errors import BadInput
from .session import AttestedSession


def generate(session: AttestedSession, prompt: str, *, max_tokens: int = 128, model: str = "ensemble",
             **parameters) -> str:
    """POST /v2/models/<model>/generate {"text_input", "max_tokens", …}; returns `text_output`.
    Extra keyword arguments (temperature, top_k, …) are sent as they are."""
    resp = session.post(f"/v2/models/{model}/generate",
                        json={"text_input": prompt, "max_tokens": max_tokens, **parameters})
    where = f"https://{session.host}:{session.port}/v2/models/{model}/generate"
    if resp.status != 200:
        raise BadInput(where, f"HTTP {resp.status}: {resp.text[:300]}")
    try:
        return resp.json()["text_output"]
    except (ValueError, KeyError, TypeError):
        raise BadInput(where, "the answer has no text_output") from None
