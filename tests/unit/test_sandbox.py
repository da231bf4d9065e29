"""How an image's OCI config becomes a sandboxed service (pipeline/sandbox.py, docs/sandbox.md).

The User cases follow runc's libcontainer/user GetExecUser (its documented rules: a numeric uid
needs no passwd entry and then keeps the default gid 0 and HOME /; supplementary groups only for
a matched user with no explicit group). The real comparison with podman + runc is on a boot
(tests/integration/test_sandbox_boot.py); these pin the rules and the refusals.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from pipeline import sandbox
from pipeline.errors import BadInput
from pipeline.oci_read import ImageConfig, _config

PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1500:1500:app:/home/app:/bin/sh\n"
GROUP = "root:x:0:\napp:x:1500:\nstaff:x:1600:app,other\nwheel:x:10:root\n"


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text(PASSWD)
    (tmp_path / "etc/group").write_text(GROUP)
    return tmp_path


@pytest.mark.parametrize("spec, want", [
    ("1000", (1000, 0, (), "/")),  # no entry: gid 0, HOME / (runc's defaults)
    ("1000:1000", (1000, 1000, (), "/")),
    ("app", (1500, 1500, (1600,), "/home/app")),  # staff lists app
    ("1500", (1500, 1500, (1600,), "/home/app")),  # a numeric uid with an entry is that user
    ("app:staff", (1500, 1600, (), "/home/app")),  # an explicit group: no supplementary groups
    ("app:4242", (1500, 4242, (), "/home/app")),
    ("0", (0, 0, (10,), "/root")),
    ("root", (0, 0, (10,), "/root")),
])
def test_user_is_resolved_as_runc_does(rootfs, spec, want):
    who = sandbox.identity(rootfs, spec, "img")
    assert (who.uid, who.gid, who.groups, who.home) == want and who.spec == spec


def test_a_numeric_user_needs_no_passwd_at_all(tmp_path):
    who = sandbox.identity(tmp_path, "1000", "img")  # FROM scratch: no /etc
    assert (who.uid, who.gid, who.groups, who.home) == (1000, 0, (), "/")


@pytest.mark.parametrize("spec, what", [("nobody-here", "no user 'nobody-here'"), ("app:nogroup", "no group 'nogroup'"),
                                        ("99999999999", "no user")])
def test_unknown_names_are_refused(rootfs, spec, what):
    with pytest.raises(BadInput) as e:
        sandbox.identity(rootfs, spec, "images/app.tar")
    assert what in str(e.value) and "images/app.tar" in str(e.value)


def _config_of(**c) -> ImageConfig:
    return _config({"config": c, "rootfs": {"diff_ids": []}}, "img")[0]


def test_image_config_fields(tmp_path):
    c = _config_of(Entrypoint=["/srv"], Volumes={"/data": {}}, StopSignal="QUIT",
                   Healthcheck={"Test": ["CMD", "true"]}, WorkingDir="/w")
    assert c.volumes == ("/data",) and c.stop_signal == "SIGQUIT" and c.healthcheck and c.user == ""
    assert not _config_of(Healthcheck={"Test": ["NONE"]}).healthcheck
    for bad in ({"WorkingDir": "rel"}, {"StopSignal": "x; rm"}, {"Volumes": {"rel": {}}}):
        with pytest.raises(BadInput):
            _config_of(**bad)


def test_what_the_runtime_cannot_honour_is_said():
    c = _config_of(Entrypoint=["/srv"], Volumes={"/data": {}}, Healthcheck={"Test": ["CMD", "true"]},
                   ExposedPorts={"9000/tcp": {}})
    lines = sandbox.issues(c, "app.tar", 8000)
    assert len(lines) == 3 and all(line.startswith("app.tar: ") for line in lines)
    assert any("VOLUME /data" in x for x in lines) and any("HEALTHCHECK" in x for x in lines)
    assert any("9000" in x and "8000" in x for x in lines)
    assert sandbox.issues(_config_of(Entrypoint=["/srv"], ExposedPorts={"8000/tcp": {}}), "a", 8000) == []


def _argv(config: ImageConfig, who: sandbox.Identity) -> list[str]:
    return shlex.split(sandbox.service_argv("app", "/run/mithril/rootfs/app", config, who, ["DevicePolicy=closed"],
                                            [], "img"))


def test_an_unprivileged_user_is_reached_through_gosu_with_runc_home(rootfs):
    c = _config_of(Entrypoint=["/bin/httpd"], Cmd=["-f"], Env=["PATH=/bin"], WorkingDir="/srv")
    argv = _argv(c, sandbox.identity(rootfs, "app", "img"))
    cmd = argv[argv.index("--") + 1:]
    assert cmd == [sandbox.GOSU, "app", "/bin/httpd", "-f"]
    assert "--property=CapabilityBoundingSet=CAP_SETUID CAP_SETGID" in argv
    assert "--setenv=HOME=/home/app" in argv and "--setenv=PATH=/bin" in argv
    assert "--property=WorkingDirectory=/srv" in argv and "--property=RootDirectory=/run/mithril/rootfs/app" in argv
    for p in sandbox.COMMON:
        assert f"--property={p}" in argv


def test_root_keeps_uid_0_but_no_capability(rootfs):
    c = _config_of(Entrypoint=["/probe"], Env=["HOME=/custom"], StopSignal="SIGINT", Volumes={"/cache": {}})
    argv = _argv(c, sandbox.identity(rootfs, "0", "img"))
    assert argv[argv.index("--") + 1:] == ["/probe"]
    assert "--property=CapabilityBoundingSet=" in argv and "--setenv=HOME=/custom" in argv
    assert not any(a.startswith("--setenv=HOME=/root") for a in argv)  # the image's HOME wins
    assert "--property=KillSignal=SIGINT" in argv and "--property=TemporaryFileSystem=/cache" in argv


def test_the_default_user_is_not_root(rootfs):
    c = _config_of(Entrypoint=["/srv"])
    who = sandbox.identity(rootfs, sandbox.user_spec(c, sandbox.DEFAULT_USER), "img")
    assert (who.uid, who.gid) == (65532, 65532)
    assert sandbox.user_spec(_config_of(Entrypoint=["/srv"], User="app"), sandbox.DEFAULT_USER) == "app"


def test_run_says_which_app_does_not_answer_and_where_to_look(monkeypatch, tmp_path):
    from pipeline import attest

    answers = {"/": [502, 502, 200], "/dead/": [502, 502, 502]}
    monkeypatch.setattr(attest, "app_status", lambda url, path: answers[path].pop(0) if len(answers[path]) > 1
                        else answers[path][0])
    import time

    clock = iter(range(1000))
    monkeypatch.setattr(time, "monotonic", lambda: next(clock))  # one tick a call: the 10 s run out
    status = attest.probe_apps("https://x", {"app": ("/", 8000), "dead": ("/dead/", 8087)}, wait=10,
                               sleep=lambda s: None)
    assert status == {"app": 200, "dead": 502}  # waited until only the dead one was left failing
    log = tmp_path / "run-serial.log"
    assert attest.app_diagnosis("app", "/", 8000, 200, log, "app", "production") is None
    prod = attest.app_diagnosis("dead", "/dead/", 8087, 502, log, "app", "production")
    assert "port 8087" in prod and "HTTP 502" in prod and "nothing accepts connections" in prod
    assert "production guest shows nothing" in prod and "--profile app-debug" in prod and str(log) in prod
    debug = attest.app_diagnosis("app", "/", 8000, None, log, "app", "debug")
    assert "no answer from the ingress" in debug and "mithril-app.service" in debug and "app-debug" not in debug
