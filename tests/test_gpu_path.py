"""The training path on every device: a few steps through a group re-fit (k-means++ draws,
label comparisons) and the deblur stage's DCTs in float32 under autocast.

The "cuda" cases run only where torch sees a GPU (train.py uses bf16 autocast there); on a
CPU-only machine they are skipped and the CPU cases still exercise the same code, including
the autocast branch of the deblur stage (CPU bf16 autocast).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from engine.model import checkpoint as ckpt
from engine.model.config import ModelConfig
from engine.model.groups import GroupFinder, fit_groups
from engine.model.network import FrequencyDeblur
from engine.model.train import TrainConfig, _check_resume_schedule, train
from p2es.errors import P2esError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(widths=(8, 16, 16), emb_dim=32, n_groups=4, group_dim=8)  # as test_engine_core (T from data)

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch")
    ),
]


@pytest.mark.parametrize("device", DEVICES)
def test_training_steps_through_group_refits(tmp_path, device):
    cfg = TrainConfig(
        variant="p2es",
        model=dict(TINY),
        steps=6,
        batch_size=8,
        lr=3e-3,
        warmup=2,
        data="fake",
        duration_s=2.0,
        chunk_records=16,
        ckpt_every=0,
        group_refit_every=2,  # re-fits after steps 2, 4 and 6
        group_reservoir=32,
        log_every=1,
        progress=False,
        seed=0,
        device=device,
    )
    bank0 = GroupFinder(dim=8, n_groups=4).bank.clone()  # the initial bank (same seed)
    res = train(cfg, tmp_path / "set.pt")
    losses = [h["loss"] for h in res["history"]]
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses), losses
    groups = res["model"].groups
    assert int(groups.bank_fits) == 3  # every re-fit happened (n >= 2 * n_groups from step 2 on)
    bank = groups.bank.detach().cpu()
    assert torch.isfinite(bank).all() and not torch.allclose(bank, bank0)
    torch.testing.assert_close(bank.norm(dim=-1), torch.ones(4))
    assert groups.bank.device.type == torch.device(device).type
    # the stored set loads on the CPU with the fitted bank
    e = ckpt.load_model(tmp_path / "set.pt")
    assert int(e.model.groups.bank_fits) == 3 and torch.equal(e.model.groups.bank, bank)


def _clusters(device: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    lab = torch.arange(120) % 4
    Z = torch.nn.functional.normalize(centres[lab] + 0.05 * torch.randn(120, 8, generator=g), dim=-1)
    return Z.to(device)


@pytest.mark.parametrize("device", DEVICES)
def test_fit_groups_stays_on_device_and_matches_cpu(device):
    Z = _clusters(device)
    c, lab = fit_groups(Z, 4, seed=1)
    assert c.device.type == lab.device.type == torch.device(device).type
    c_cpu, lab_cpu = fit_groups(Z.cpu(), 4, seed=1)  # the same seeds: the same draws on the CPU
    assert torch.equal(lab.cpu(), lab_cpu)
    torch.testing.assert_close(c.cpu(), c_cpu, atol=1e-5, rtol=1e-5)
    # warm start from centres on another device than Z
    c2, lab2 = fit_groups(Z, 4, init=c_cpu, seed=5)
    assert torch.equal(lab2.cpu(), lab_cpu) and c2.device == Z.device


@pytest.mark.parametrize("device", DEVICES)
def test_deblur_dcts_run_in_float32_under_autocast(device):
    """At initialisation the deblur stage is the identity (zero log-gain, zero conv): DCT then
    inverse DCT.  In float32 that gives y back to ~1e-6; in bf16 the T = 1024 sums would be
    off by ~1e-2.  The output keeps the input's dtype."""
    torch.manual_seed(0)
    d = FrequencyDeblur(ModelConfig(T=1024, emb_dim=32)).to(device)
    y = torch.randn(4, 8, 1024, device=device).bfloat16()
    temb = torch.randn(4, 32, device=device)
    dev_type = torch.device(device).type
    with torch.no_grad(), torch.autocast(dev_type, dtype=torch.bfloat16):
        out = d(y, temb)
        naive = d._deblur(y, temb)  # what autocast alone would do
    assert out.dtype == y.dtype
    err = float((out.float() - y.float()).abs().max())
    assert err < 1e-4, err
    assert float((naive.float() - y.float()).abs().max()) > 10 * max(err, 1e-4)  # the test can tell
    # no autocast, float32: the plain path, identical to calling the stage directly
    y32 = y.float()
    with torch.no_grad():
        assert torch.equal(d(y32, temb), d._deblur(y32, temb))


def test_resume_refuses_another_schedule(tmp_path: Path) -> None:
    """A run resumed under another blur schedule than it trained with is refused (a resume file
    from before ``blur_power`` existed counts as the legacy form, 2)."""
    cur = {"kind": "blur", "sigma_blur_max": 20.0, "blur_power": 4}
    _check_resume_schedule("r.pt", {"schedule_config": dict(cur)}, cur)  # same: fine
    with pytest.raises(P2esError, match="blur_power=2"):
        _check_resume_schedule("r.pt", {}, cur)  # old resume file: legacy blur
    _check_resume_schedule("r.pt", {}, {**cur, "blur_power": 2})
    _check_resume_schedule("r.pt", {}, {"kind": "gaussian", "blur_power": 4})  # not a blur: irrelevant
