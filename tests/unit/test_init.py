"""`mithril-build init`: every project its own seed and name; --image wraps the user's image."""

from __future__ import annotations

import hashlib

import yaml

from pipeline.archive import Entry
from pipeline.oci import image_archive
from tests.conftest import mb


def test_each_project_gets_its_own_seed_and_name(tmp_path):
    for name in ("Alpha Team", "beta"):
        assert mb("init", tmp_path / name).returncode == 0
    a, b = (yaml.safe_load((tmp_path / n / "mithril.yaml").read_text()) for n in ("Alpha Team", "beta"))
    assert a["seed"] != b["seed"]
    assert (a["project"], b["project"]) == ("alpha-team", "beta")
    assert mb("plan", "--project", tmp_path / "beta").returncode == 0  # what init writes loads


def test_seed_option(tmp_path):
    seed = "12345678-1234-4234-8234-123456789abc"
    assert mb("init", tmp_path / "p", "--seed", seed).returncode == 0
    assert yaml.safe_load((tmp_path / "p/mithril.yaml").read_text())["seed"] == seed


def test_image_project_pins_the_archive(tmp_path):
    data, _ = image_archive("localhost/shop", "2", [Entry("bin", 0o755), Entry("bin/shop", 0o755, b"#!")],
                            entrypoint=["/bin/shop"], mtime=0, exposed_ports=[9000])
    (tmp_path / "shop.tar").write_bytes(data)
    res = mb("init", tmp_path / "wrap", "--image", tmp_path / "shop.tar")
    assert res.returncode == 0, res.stderr
    config = yaml.safe_load((tmp_path / "wrap/mithril.yaml").read_text())
    assert config["default_profile"] == "app" and config["profiles"]["app"]["app"] == "image"
    assert config["appdisk"]["app_image"] == "app" and config["appdisk"]["app_port"] == 9000
    lock = yaml.safe_load((tmp_path / "wrap/mithril.lock").read_text())
    pin = lock["images"]["app"]
    assert pin["ref"] == "localhost/shop:2" and pin["archive"]["path"] == "images/app.tar"
    assert pin["archive"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "wrap/images/app.tar").read_bytes() == data


def one_line_exit_2(res):
    assert res.returncode == 2, res.stdout + res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    return res.stderr


def test_bad_image_writes_nothing(tmp_path):
    (tmp_path / "junk.tar").write_bytes(b"junk" * 100)
    assert "junk.tar" in one_line_exit_2(mb("init", tmp_path / "p", "--image", tmp_path / "junk.tar"))
    assert not (tmp_path / "p").exists()
    one_line_exit_2(mb("init", tmp_path / "p", "--image", tmp_path / "missing.tar"))
    assert "--port" in one_line_exit_2(mb("init", tmp_path / "p", "--port", "80"))
    assert not (tmp_path / "p").exists()


def test_image_without_one_exposed_port_needs_port(tmp_path):
    data, _ = image_archive("localhost/x", "1", [Entry("x", 0o755, b"#!")], entrypoint=["/x"], mtime=0)
    (tmp_path / "x.tar").write_bytes(data)
    assert "--port" in one_line_exit_2(mb("init", tmp_path / "p", "--image", tmp_path / "x.tar"))
    assert mb("init", tmp_path / "p", "--image", tmp_path / "x.tar", "--port", "8080").returncode == 0


def test_the_wheel_carries_what_init_copies():
    """setup.py copies the starter files into the wheel (pipeline/_starter/); the same list as init's."""
    import ast

    from pipeline import project
    from tests.conftest import REPO

    tree = ast.parse((REPO / "setup.py").read_text())
    value = next(n.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
                 and any(getattr(t, "id", None) == "STARTER" for t in n.targets))
    assert ast.literal_eval(value) == project.STARTER
