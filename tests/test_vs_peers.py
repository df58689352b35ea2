"""tools.vs_peers: reading the RESULT lines, the two command lines, and its one-line errors."""

from __future__ import annotations

import sys
from pathlib import Path

from tools import vs_peers


def test_parse_result_takes_the_named_last_result_line():
    out = (
        "train: step median 700 ms\n"
        "RESULT name=train img_per_s=85.57 batch=64\n"
        "RESULT name=fid img_per_s=19.80 batch=50\n"
    )
    assert vs_peers.parse_result(out, "train") == 85.57
    assert vs_peers.parse_result(out, "fid") == 19.80
    assert vs_peers.parse_result(out) == 19.80  # the peer scripts print one line, any name
    assert vs_peers.parse_result("no result here", "train") is None


def test_commands_pin_the_same_work_on_both_sides():
    peers = Path("/p")
    train = vs_peers.commands("train", "configs/dcgan64.py", peers, "/venv/python", 2)
    assert train["ours"][:3] == [sys.executable, "-m", "facegan_jax.benchmark"]
    assert "--only=train" in train["ours"] and "--config=configs/dcgan64.py" in train["ours"]
    assert train["peer"] == [
        "/venv/python",
        "/p/torch_dcgan.py",
        "--steps=20",
        "--batch=64",
        "--threads=2",
        "--channels-last",
    ]
    fid = vs_peers.commands("fid", "configs/dcgan64.py", peers, "/venv/python", 2)
    assert "--only=fid" in fid["ours"] and "--fid-batch=50" in fid["ours"]
    assert fid["peer"][1] == "/p/torch_fid_features.py" and "--batch=50" in fid["peer"]


def test_missing_peers_or_venv_is_one_line_and_exit_2(tmp_path, capsys):
    assert vs_peers.main([f"--peers-dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err == f"vs_peers: error: --peers-dir={tmp_path}: no torch_dcgan.py there\n"
    (tmp_path / "torch_dcgan.py").write_text("")
    missing = tmp_path / "nope" / "python"
    assert vs_peers.main([f"--peers-dir={tmp_path}", f"--peer-python={missing}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vs_peers: error: --peer-python={missing} does not exist") and (
        err.count("\n") == 1
    )


def test_conv_backend_reaches_our_side_only_and_is_printed(tmp_path, monkeypatch, capsys):
    (tmp_path / "torch_dcgan.py").write_text("")
    peer_python = tmp_path / "python"
    peer_python.write_text("")
    seen = []

    def fake_run_side(command, name, env=None):
        seen.append((name, None if env is None else env["FACEGAN_CONV_BACKEND"]))
        return 80.0 if name else 64.0

    monkeypatch.setattr(vs_peers, "run_side", fake_run_side)
    argv = [f"--peers-dir={tmp_path}", f"--peer-python={peer_python}", "--what=train"]
    assert vs_peers.main([*argv, "--rounds=2", "--conv-backend=onednn"]) == 0
    # Ours gets the backend in its environment; the peer runs with the inherited one.
    assert seen == [("train", "onednn"), (None, None), (None, None), ("train", "onednn")]
    out = capsys.readouterr().out
    assert (
        "our convolutions: onednn" in out and "RATIO train 1.25x (our convolutions: onednn)" in out
    )
