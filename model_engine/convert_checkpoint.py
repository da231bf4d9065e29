"""Convert a Hugging Face checkpoint (llama or gpt family) to a TensorRT-LLM checkpoint.

Runs inside the pinned container. It uses TensorRT-LLM's own `from_hugging_face` loaders (the
same ones its examples/<family>/convert_checkpoint.py call), one rank at a time.
"""

import argparse


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--family", choices=["llama", "gpt"], required=True)
    ap.add_argument("--model_dir", required=True)
    ap.add_argument("--output_dir", required=True)
    ap.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], required=True)
    ap.add_argument("--tp_size", type=int, default=1)
    return ap


def main() -> None:
    args = parser().parse_args()

    from tensorrt_llm.mapping import Mapping
    from tensorrt_llm.models import GPTForCausalLM, LLaMAForCausalLM

    cls = {"llama": LLaMAForCausalLM, "gpt": GPTForCausalLM}[args.family]
    for rank in range(args.tp_size):
        mapping = Mapping(world_size=args.tp_size, rank=rank, tp_size=args.tp_size)
        model = cls.from_hugging_face(args.model_dir, dtype=args.dtype, mapping=mapping)
        model.save_checkpoint(args.output_dir, save_config=rank == 0)
        del model


if __name__ == "__main__":
    main()
