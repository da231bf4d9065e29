"""The mithril-attestation-server distribution from ../attestation_server (the checkout) or
./attestation_server (an unpacked sdist), without moving the package: the sdist copies it in.
The same recipe as client/setup.py."""

import os
import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
TOP = HERE if (HERE / "PKG-INFO").is_file() else HERE.parent  # an unpacked sdist, or the checkout


class Sdist(sdist):
    def make_release_tree(self, base_dir, files):
        # the package's files are listed as ../attestation_server/...: copied into the archive below,
        # never next to it
        super().make_release_tree(base_dir, [f for f in files if not f.startswith("..")])
        if TOP != HERE:
            shutil.copytree(TOP / "attestation_server", Path(base_dir) / "attestation_server", dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(packages=find_packages(str(TOP), include=["attestation_server", "attestation_server.*"]),
      package_dir={"": os.path.relpath(TOP, HERE)},
      cmdclass={"sdist": Sdist})
