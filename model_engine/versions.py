"""Print the versions the engine build ran with, as JSON (run inside the container)."""

import json
import os


def version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except (ImportError, AttributeError):  # absent: record that, do not fail the build
        return None


def main() -> None:
    import torch

    print(json.dumps({
        "tensorrt_llm": version("tensorrt_llm"),
        "tensorrt": version("tensorrt"),
        "torch": version("torch"),
        "transformers": version("transformers"),
        "cuda": torch.version.cuda,
        "triton_server": os.environ.get("TRITON_SERVER_VERSION") or os.environ.get("NVIDIA_TRITON_SERVER_VERSION"),
    }, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
