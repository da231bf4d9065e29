"""Functional fingerprint of an engine: greedy output token ids for fixed prompts, as JSON.

Engines are not bit-reproducible, but the same inputs should give the same greedy tokens on the
same GPU type; auditors compare this (see docs/model.md). Runs inside the container, on the GPU.
"""

import argparse
import json

PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):",
    "Confidential computing protects data in use by",
)
NEW_TOKENS = 16


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--engine_dir", required=True)
    ap.add_argument("--tokenizer_dir", required=True)
    args = ap.parse_args()

    import torch
    from tensorrt_llm import mpi_rank
    from tensorrt_llm.runtime import ModelRunner
    from transformers import AutoTokenizer

    rank = mpi_rank()  # 0 unless started under mpirun (tensor parallelism)
    tok = AutoTokenizer.from_pretrained(args.tokenizer_dir)
    runner = ModelRunner.from_dir(engine_dir=args.engine_dir, rank=rank)
    end_id = tok.eos_token_id
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else end_id
    results = []
    for prompt in PROMPTS:
        ids = torch.tensor(tok.encode(prompt), dtype=torch.int32)
        out = runner.generate([ids], max_new_tokens=NEW_TOKENS, end_id=end_id, pad_id=pad_id,
                              temperature=1.0, top_k=1, top_p=0.0, num_beams=1)
        tokens = out[0][0].tolist()[len(ids):len(ids) + NEW_TOKENS]
        results.append({"prompt": prompt, "input_ids": ids.tolist(), "output_ids": tokens})
    if rank != 0:
        return
    print(json.dumps({"method": "greedy top_k=1", "new_tokens": NEW_TOKENS, "results": results},
                     indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
