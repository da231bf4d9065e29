"""`mithril-client`, the client distribution's own command line (argparse): help, usage errors,
bad input and an unreachable server exit as documented, with one line on stderr. What it
verifies is tested where mithril-build's `attest verify` and `connect` are, side by side
(tests/unit/test_attest_azure_capture.py, tests/integration/test_connect.py)."""

from __future__ import annotations

import json
import socket

from tests.conftest import mc


def test_help_names_both_commands_and_the_exit_codes():
    res = mc("--help")
    assert res.returncode == 0 and "connect" in res.stdout and "verify" in res.stdout and "exit codes" in res.stdout
    for command in ("connect", "verify"):
        res = mc(command, "--help")
        assert res.returncode == 0 and "--measurements" in res.stdout and "--json" in res.stdout, res.stdout


def test_usage_errors_exit_2():
    assert mc().returncode == 2
    res = mc("verify", "--evidence", "e.json", "--measurements", "m.json")  # no --nonce
    assert res.returncode == 2 and "--nonce" in res.stderr
    assert mc("frobnicate").returncode == 2


def measurements(tmp_path):
    path = tmp_path / "measurements.json"
    path.write_text(json.dumps({"version": 1, "platform": "qemu", "mode": "production",
                                "pcrs": {"15": {"expected": ["00" * 32], "policy": "enforce"}}}))
    return path


def test_bad_input_is_one_line_naming_the_file_and_exit_2(tmp_path):
    m = measurements(tmp_path)
    res = mc("verify", "--evidence", tmp_path / "missing.json", "--nonce", "00" * 32, "--measurements", m)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and "missing.json" in res.stderr and "--evidence" in res.stderr, res.stderr
    (tmp_path / "e.json").write_text("{not json")
    res = mc("verify", "--evidence", tmp_path / "e.json", "--nonce", "00" * 32, "--measurements", m)
    assert res.returncode == 2 and "e.json" in res.stderr and res.stderr.count("\n") == 1, res.stderr
    res = mc("verify", "--quote", "q", "--signature", "s", "--pcrs", "p", "--ak-pub", "a", "--nonce", "xyz",
             "--measurements", m)
    assert res.returncode == 2 and "--nonce" in res.stderr
    res = mc("verify", "--nonce", "00" * 32, "--measurements", m)  # neither --evidence nor the quote files
    assert res.returncode == 2 and "--quote" in res.stderr
    res = mc("connect", "http://127.0.0.1:1/", "--measurements", m)  # not https: nothing is sent
    assert res.returncode == 2 and "https" in res.stderr
    res = mc("connect", "https://127.0.0.1:1/", "--measurements", m, "-H", "no colon")
    assert res.returncode == 2 and "--header" in res.stderr


def test_an_unreachable_server_exits_3(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = mc("connect", f"https://127.0.0.1:{port}/", "--measurements", measurements(tmp_path), "--json")
    assert res.returncode == 3 and res.stdout == "" and res.stderr.count("\n") == 1, res.stderr
