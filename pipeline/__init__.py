"""mithril-build: reproducible, measured builds of confidential AI servers."""

from pathlib import Path

CONFIG_FILE = "mithril.yaml"  # a project is the folder that holds it


def starter() -> Path:
    """The folder that holds the starter files (mithril.yaml, mithril.lock, appdisk/, mkosi/,
    measurements/, model_engine/): the copy an installed wheel carries (setup.py), else the
    checkout this package runs from."""
    here = Path(__file__).resolve().parent
    return here / "_starter" if (here / "_starter").is_dir() else here.parent
