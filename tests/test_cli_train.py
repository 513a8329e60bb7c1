"""``p2es train``: bad input gives one line and a non-zero exit, never a traceback."""

from __future__ import annotations

import pytest

from p2es.cli import main

TINY = [
    "--steps",
    "2",
    "--batch-size",
    "2",
    "--progress",
    "false",
    "--num-threads",
    "1",
    "--model",
    '{"widths": [8, 16], "emb_dim": 16, "n_groups": 2, "group_dim": 8}',
]


def run(capsys, *argv: str) -> tuple[int, str]:
    try:
        rc = main(list(argv))
    except SystemExit as exc:
        rc = int(exc.code or 0)
    return rc, capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--variant", "nope"], "unknown model variant 'nope'"),
        (["--data", "/nonexistent/x.npz"], "no such file"),
        (["--steps", "0"], "steps must be >= 1"),
        (["--batch-size", "0"], "batch-size must be >= 1"),
        (["--lr", "-1"], "lr must be > 0"),
        (["--fs", "10"], "fs within 25-2000 Hz"),
        (["--device", "cuda:7"], "no CUDA GPU"),
        (["--config", "/nonexistent/c.yaml"], "cannot read"),
    ],
)
def test_train_bad_input_one_line(tmp_path, capsys, extra, needle):
    rc, err = run(capsys, "train", "--out", str(tmp_path / "s.pt"), *TINY, *extra)
    assert rc == 2, err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_train_corrupt_files(tmp_path, capsys):
    out = tmp_path / "s.pt"
    (tmp_path / "s.p2es.resume.pt").write_bytes(b"not a torch file")
    rc, err = run(capsys, "train", "--out", str(out), "--resume", *TINY)
    assert rc == 2 and "corrupt" in err and err.count("\n") == 1
    out.write_bytes(b"garbage")
    rc, err = run(capsys, "train", "--out", str(out), *TINY)
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err


def test_train_tiny_run_writes_a_loadable_set(tmp_path, capsys):
    from engine.model.checkpoint import list_models, load_model

    out = tmp_path / "s.pt"
    rc, err = run(capsys, "train", "--out", str(out), *TINY, "--variant", "ddpm")
    assert rc == 0, err
    assert "ddpm" in list_models(out)
    entry = load_model(out, "ddpm")
    assert entry is not None


def test_stop_at_then_resume_finishes_the_same_schedule(tmp_path, capsys):
    from engine.model.checkpoint import list_models

    out = tmp_path / "s.pt"
    args = ["train", "--out", str(out), *TINY[2:], "--variant", "ddpm", "--steps", "4", "--resume"]
    assert run(capsys, *args, "--stop-at", "2")[0] == 0
    meta = list_models(out)["ddpm"]
    assert meta["steps"] == 2 and meta["final"] is False
    assert run(capsys, *args)[0] == 0
    meta = list_models(out)["ddpm"]
    assert meta["steps"] == 4 and meta["final"] is True
