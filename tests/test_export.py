"""``p2es export``: ONNX graphs of the network passes (dynamic batch, DCT as MatMul, only ops
TensorRT's parser takes, equal to torch), the on-demand cache, and the TensorRT build plan
(profile shapes, engine-cache keys) - everything up to the engine build, which needs TensorRT."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_backends import _tiny_set


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return _tiny_set(tmp_path_factory.mktemp("ex") / "tiny.pt", ("p2es", "ddpm"))


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("P2ES_CACHE_DIR", str(tmp_path / "cache"))


def _main(argv):
    from p2es.cli import main

    return main(argv)


def test_export_cli_onnx_end_to_end(tiny_ckpt, tmp_path, capsys):
    import onnx
    import onnxruntime as ort

    from engine.serve.export import TRT_SUPPORTED_OPS

    out = tmp_path / "onnx"
    rc = _main(
        ["export", "--checkpoint", str(tiny_ckpt), "--format", "onnx", "--out", str(out), "--models", "all"]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "DCT as MatMul" in text and "TensorRT ONNX parser: all op types supported" in text
    rep = json.loads((out / "export_report.json").read_text())
    assert set(rep["models"]) == {"p2es", "ddpm"}
    for name, meta in rep["models"].items():
        d = out / name
        for g in ("encode", "denoise"):
            m = onnx.load(str(d / f"{g}.onnx"))
            onnx.checker.check_model(m, full_check=True)
            for vi in list(m.graph.input) + list(m.graph.output):  # dynamic batch axis everywhere
                assert vi.type.tensor_type.shape.dim[0].dim_param == "B", (name, g, vi.name)
            ops = {n.op_type for n in m.graph.node}
            assert ops <= TRT_SUPPORTED_OPS, ops - TRT_SUPPORTED_OPS
            assert not ops & {"DFT", "STFT"}
            assert meta["graphs"][g]["op_types"] == sorted(ops)
        assert max(meta["check_passes_rel_err"].values()) < 1e-4
        assert meta["check_reconstruction_rel_err"]["mean"] < 1e-4
        assert json.loads((d / "meta.json").read_text())["model_hash"] == meta["model_hash"]
        # a batch size never traced runs
        s = ort.InferenceSession(str(d / "encode.onnx"), providers=["CPUExecutionProvider"])
        feed = {
            "ppg": np.zeros((5, 3, 1024), np.float32),
            "demo": np.zeros((5, 5), np.float32),
            "demo_mask": np.zeros((5, 5), np.float32),
        }
        outs = s.run(None, {i.name: feed[i.name] for i in s.get_inputs()})
        assert all(o.shape[0] == 5 for o in outs)
    p = rep["models"]["p2es"]
    assert p["graphs"]["denoise"]["dct_matmuls"] == 2 and p["dct_as_matmul"]  # deblur: DCT + inverse
    enc_out = set(p["graphs"]["encode"]["outputs"])
    assert {"gemb", "A"} <= enc_out  # the GroupFinder's soft assignment -> affinity is inside encode
    assert set(p["graphs"]["denoise"]["inputs"]) == {"x_t", "t", "feat0", "feat1", "feat2", "gemb", "A"}


def test_export_tensorrt_without_tensorrt_writes_plan_and_fails_one_line(tiny_ckpt, tmp_path, capsys):
    from engine.serve.backends.tensorrt import tensorrt_available

    if tensorrt_available():
        pytest.skip("tensorrt is installed here: the build would run")
    out = tmp_path / "trt"
    rc = _main(
        [
            "export",
            "--checkpoint",
            str(tiny_ckpt),
            "--format",
            "tensorrt",
            "--out",
            str(out),
            "--no-check",
            "--max-batch",
            "16",
            "--opt-batch",
            "4",
            "--k",
            "2",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "TensorRT is not installed" in err
    plan = json.loads((out / "p2es" / "tensorrt_plan.json").read_text())
    assert plan["precision"] == "fp16" and plan["max_batch"] == 16
    assert plan["profiles"]["encode"]["ppg"] == [[1, 3, 1024], [4, 3, 1024], [16, 3, 1024]]
    assert plan["profiles"]["denoise"]["x_t"] == [[1, 8, 1024], [8, 8, 1024], [32, 8, 1024]]
    assert (out / "p2es" / "encode.onnx").is_file()


def test_profile_shapes_cover_every_graph_input(tiny_ckpt, tmp_path):
    import onnx

    from engine.model.checkpoint import load_model
    from engine.serve.backends.tensorrt import profile_shapes
    from engine.serve.export import export_graphs

    e = load_model(tiny_ckpt, "p2es")
    export_graphs(e, tmp_path)
    prof = profile_shapes(e.model.cfg, max_batch=32, opt_batch=8, k=4)
    for g in ("encode", "denoise"):
        m = onnx.load(str(tmp_path / f"{g}.onnx"))
        ins = {
            i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in m.graph.input
        }
        assert set(prof[g]) == set(ins)
        for name, (lo, opt, hi) in prof[g].items():
            assert lo[1:] == opt[1:] == hi[1:] == ins[name][1:], (g, name)  # static dims agree with the graph
            scale = 4 if g == "denoise" else 1  # denoise runs B x K rows
            assert (lo[0], opt[0], hi[0]) == (1, 8 * scale, 32 * scale)
    assert prof["denoise"]["t"] == [[1], [32], [128]]


def test_engine_cache_key_changes_with_everything_that_changes_the_engine():
    from engine.serve.backends.tensorrt import engine_cache_key, timing_cache_name

    base = dict(
        gpu="NVIDIA H100 80GB HBM3",
        compute_capability="90",
        trt_version="10.3.0",
        precision="fp16",
        profile={"x_t": [[1, 8, 1024], [16, 8, 1024], [64, 8, 1024]]},
    )
    k0 = engine_cache_key("abc", "denoise", **base)
    assert k0 == engine_cache_key("abc", "denoise", **dict(base))  # deterministic
    variants = [engine_cache_key("abd", "denoise", **base), engine_cache_key("abc", "encode", **base)]
    for field, value in [
        ("gpu", "NVIDIA H200"),
        ("compute_capability", "89"),
        ("trt_version", "10.4.0"),
        ("precision", "fp32"),
        ("profile", {"x_t": [[1, 8, 1024], [8, 8, 1024], [64, 8, 1024]]}),
    ]:
        variants.append(engine_cache_key("abc", "denoise", **{**base, field: value}))
    assert len({k0, *variants}) == len(variants) + 1
    assert (
        timing_cache_name("NVIDIA H100 80GB HBM3", "90", "10.3.0")
        == "timing-NVIDIA_H100_80GB_HBM3-sm90-trt10.3.0.cache"
    )


def test_onnx_cache_is_keyed_by_model_hash(tiny_ckpt, tmp_path):
    import torch

    from engine.model.checkpoint import load_model
    from engine.serve.backends.common import model_hash
    from engine.serve.export import ensure_onnx

    e = load_model(tiny_ckpt, "p2es")
    d1 = ensure_onnx(e, tmp_path / "c")
    mtime = (d1 / "denoise.onnx").stat().st_mtime_ns
    assert ensure_onnx(e, tmp_path / "c") == d1 and (d1 / "denoise.onnx").stat().st_mtime_ns == mtime
    assert d1.name == model_hash(e, opset=17)[:24]
    with torch.no_grad():
        next(e.model.parameters()).add_(1.0)
    assert ensure_onnx(e, tmp_path / "c") != d1  # new weights -> new export


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["--opset", "30"], "--opset"),
        (["--checkpoint", "/nonexistent/x.pt"], "checkpoint not found"),
        (["--models", "nope"], "not in"),
        (["--opt-batch", "64"], "--opt-batch"),
    ],
)
def test_export_bad_input_is_one_line(tiny_ckpt, tmp_path, capsys, argv, msg):
    args = ["export", "--out", str(tmp_path / "o"), "--no-check"]
    if "--checkpoint" not in argv:
        args += ["--checkpoint", str(tiny_ckpt)]
    rc = _main(args + argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and msg in err and err.startswith("p2es: error:"), err


def test_shipped_checkpoint_onnx_matches_torch(tmp_path):
    """The shipped p2es model: both passes and the whole reconstruction within 1e-4 (fp32)."""
    from engine.model.checkpoint import DEFAULT_CHECKPOINT, load_model
    from engine.serve.export import check_reconstruction, ensure_onnx

    e = load_model(DEFAULT_CHECKPOINT, "p2es")
    d = ensure_onnx(e, tmp_path / "c")
    from engine.serve.export import check_passes

    assert max(check_passes(e, d, batch=2).values()) < 1e-4
    r = check_reconstruction(e, d, batch=2, steps=10, k=2)
    assert r["mean"] < 1e-4 and r["std"] < 1e-4, r
