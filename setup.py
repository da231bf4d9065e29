"""Packaging hook (the rest is pyproject.toml): the starter files of the checkout go into the wheel
as package data under pipeline/_starter/, without moving them in the checkout; pipeline.starter()
finds them in either place. `python3 -m pip wheel --no-deps .` builds the wheel."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
# What `mithril-build init` copies (pipeline/project.py STARTER); tests/unit/test_init.py keeps them equal.
STARTER = ("mithril.yaml", "mithril.lock", "appdisk", "mkosi", "measurements", "model_engine")


class BuildPyWithStarter(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):  # an editable install reads the checkout itself
            return
        dest = Path(self.build_lib) / "pipeline" / "_starter"
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        for name in STARTER:
            src = HERE / name
            if src.is_dir():
                shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(src, dest / name)


setup(cmdclass={"build_py": BuildPyWithStarter})
