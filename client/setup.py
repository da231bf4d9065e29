"""The mithril-client distribution from ../mithril_client (the checkout) or ./mithril_client (an
unpacked sdist), without moving the package: the sdist copies it in; its trust anchors
(data/*.pem, data/SOURCES.md) go with it."""

import os
import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
TOP = HERE if (HERE / "PKG-INFO").is_file() else HERE.parent  # an unpacked sdist, or the checkout


class Sdist(sdist):
    def make_release_tree(self, base_dir, files):
        # the package's files are listed as ../mithril_client/...: copied into the archive below,
        # never next to it
        super().make_release_tree(base_dir, [f for f in files if not f.startswith("..")])
        if TOP != HERE:
            shutil.copytree(TOP / "mithril_client", Path(base_dir) / "mithril_client", dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(packages=find_packages(str(TOP), include=["mithril_client", "mithril_client.*"]),
      package_dir={"": os.path.relpath(TOP, HERE)},
      package_data={"mithril_client": ["data/*.pem", "data/SOURCES.md"]},
      cmdclass={"sdist": Sdist})
