"""Demographic affinity: the GroupFinder and its dynamic lead-affinity matrices.

1. *Embedding.*  Each demographic field f (age, sex, height, weight, BMI) contributes
   ``v_f * W_f + b_f`` if known and a learned "missing" vector ``M_f`` otherwise; the sum,
   plus a projection of the pooled PPG-encoder features, goes through a small MLP to an
   L2-normalised embedding ``z`` (dim ``group_dim``, 32).
2. *Groups.*  A bank of ``G`` unit-norm centres (buffer ``bank``, saved with the weights) is
   fitted on a reservoir of recent training embeddings: spherical k-means (k-means++ seeding
   with a fixed seed, then warm-started from the current bank so that group ``g`` keeps its
   identity across re-fits) refined by a KNN majority vote (each point takes the most
   frequent label among its ``knn`` nearest neighbours).  Re-fit every N training steps.
3. *Dynamic affinity.*  Group ``g`` owns a lead-affinity matrix ``A_g`` [8 x 8] (identity +
   small noise).  A patient's soft assignment ``w = softmax(-|z - c_g|^2 / tau)`` gives
   ``A = sum_g w_g A_g``, which mixes the 8 lead channels of the decoder head.  ``(z, w)``
   also feed the FiLM conditioning of every block (see model.py).
4. *Contrastive loss.*  SupCon over the batch where the positives of sample i are its
   ``k`` nearest neighbours in normalised demographic space (distance over the fields both
   know) and any window of the same subject.

``LeadMixer`` is the "no groups" ablation: one learned matrix, no demographic path.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class LeadMixer(nn.Module):
    """One learned lead-mixing matrix shared by every patient (``use_groups=False``)."""

    def __init__(self, n_leads: int = 8):
        super().__init__()
        self.A = nn.Parameter(torch.eye(n_leads))

    def forward(self, y: torch.Tensor, A: torch.Tensor | None = None) -> torch.Tensor:
        return self.A @ y


class GroupFinder(nn.Module):
    # buffers (registered in __init__)
    bank: torch.Tensor  # [G, dim] unit-norm group centres
    bank_fits: torch.Tensor  # long scalar: how often the bank was fitted
    reservoir: torch.Tensor  # [R, dim] ring buffer of recent embeddings

    def __init__(
        self,
        n_demo: int = 5,
        ppg_dim: int = 192,
        *,
        dim: int = 32,
        hidden: int = 64,
        n_groups: int = 8,
        n_leads: int = 8,
        tau: float = 0.1,
        reservoir: int = 2048,
        seed: int = 0,
    ):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.n_groups, self.dim, self.tau = n_groups, dim, tau
        self.demo_w = nn.Parameter(torch.randn(n_demo, hidden, generator=g) * 0.5)
        self.demo_b = nn.Parameter(torch.zeros(n_demo, hidden))
        self.demo_missing = nn.Parameter(torch.randn(n_demo, hidden, generator=g) * 0.1)
        self.ppg_proj = nn.Linear(ppg_dim, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, dim))
        eye = torch.eye(n_leads).expand(n_groups, n_leads, n_leads)
        self.affinity = nn.Parameter(eye + 0.01 * torch.randn(n_groups, n_leads, n_leads, generator=g))
        self.register_buffer("bank", F.normalize(torch.randn(n_groups, dim, generator=g), dim=-1))
        self.register_buffer("bank_fits", torch.zeros((), dtype=torch.long))
        # recent embeddings (ring buffer) for re-fitting; training state, not model state
        self.register_buffer("reservoir", torch.zeros(reservoir, dim), persistent=False)
        self.reservoir_seen = 0

    # -- inference path ---------------------------------------------------------------
    def embed(self, demo: torch.Tensor, mask: torch.Tensor, ppg_summary: torch.Tensor) -> torch.Tensor:
        """L2-normalised embedding z [B, dim] (demo/mask [B, n_demo], ppg_summary [B, ppg_dim])."""
        m = mask[..., None]
        e = (m * (demo[..., None] * self.demo_w + self.demo_b) + (1.0 - m) * self.demo_missing).sum(1)
        h = self.norm(e + self.ppg_proj(ppg_summary))
        return F.normalize(self.mlp(h), dim=-1)

    def assign(self, z: torch.Tensor) -> torch.Tensor:
        """Soft group assignment w [B, G] = softmax(-|z - c_g|^2 / tau) (unit vectors)."""
        d2 = 2.0 - 2.0 * z @ self.bank.T
        return torch.softmax(-d2 / self.tau, dim=-1)

    def forward(
        self, demo: torch.Tensor, mask: torch.Tensor, ppg_summary: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(z [B,dim], w [B,G], A [B,8,8])``."""
        z = self.embed(demo, mask, ppg_summary)
        w = self.assign(z)
        G, L, _ = self.affinity.shape
        A = (w @ self.affinity.reshape(G, L * L)).reshape(-1, L, L)
        return z, w, A

    @staticmethod
    def mix(y: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
        """Apply per-patient lead mixing: y [B,8,T], A [B,8,8] -> A @ y."""
        return A @ y

    # -- training-time bank maintenance ------------------------------------------------
    @torch.no_grad()
    def remember(self, z: torch.Tensor) -> None:
        """Push embeddings into the ring buffer of recent embeddings."""
        z = z.detach().float()
        R = self.reservoir.shape[0]
        if z.shape[0] >= R:
            z = z[-R:]
        i0 = self.reservoir_seen % R
        n1 = min(z.shape[0], R - i0)
        self.reservoir[i0 : i0 + n1] = z[:n1]
        if n1 < z.shape[0]:
            self.reservoir[: z.shape[0] - n1] = z[n1:]
        self.reservoir_seen += z.shape[0]

    @torch.no_grad()
    def refit(self, seed: int = 0, *, iters: int = 20, knn: int = 8) -> torch.Tensor | None:
        """Re-fit the bank on the reservoir; returns the labels (None if too few points)."""
        n = min(self.reservoir_seen, self.reservoir.shape[0])
        if n < 2 * self.n_groups:
            return None
        Z = self.reservoir[:n]
        init = self.bank if int(self.bank_fits) > 0 else None
        centres, labels = fit_groups(Z, self.n_groups, init=init, seed=seed, iters=iters, knn=knn)
        self.bank.copy_(centres)
        self.bank_fits += 1
        return labels


# ---------------------------------------------------------------------------------------
# clustering (plain torch, deterministic)
# ---------------------------------------------------------------------------------------


def _kmeanspp(Z: torch.Tensor, G: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeds.  ``gen`` is a CPU generator and every draw is made on the CPU (the
    probabilities are moved there), so a seed picks the same points whatever ``Z``'s device."""
    n = Z.shape[0]
    idx = [int(torch.randint(n, (1,), generator=gen, device="cpu"))]
    d2 = (2.0 - 2.0 * Z @ Z[idx[0]]).clamp(min=0.0)
    for _ in range(1, G):
        p = d2 / d2.sum() if float(d2.sum()) > 0 else torch.full_like(d2, 1.0 / n)
        i = int(torch.multinomial(p.cpu(), 1, generator=gen))
        idx.append(i)
        d2 = torch.minimum(d2, (2.0 - 2.0 * Z @ Z[i]).clamp(min=0.0))
    return Z[idx].clone()


def _centres(Z: torch.Tensor, labels: torch.Tensor, G: int, old: torch.Tensor) -> torch.Tensor:
    one = F.one_hot(labels, G).to(Z.dtype)  # [N, G]
    sums = one.T @ Z  # [G, D]
    counts = one.sum(0)
    c = F.normalize(sums, dim=-1)
    return torch.where(counts[:, None] > 0, c, old)


def fit_groups(
    Z: torch.Tensor, G: int, *, init: torch.Tensor | None = None, seed: int = 0, iters: int = 20, knn: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spherical k-means of unit vectors ``Z`` [N, D] into ``G`` groups + KNN majority vote.

    ``init``: starting centres (warm start keeps group identities); else k-means++ with
    ``seed``.  An empty group is re-seeded with the point farthest from its centre.
    Returns ``(centres [G, D] unit-norm, labels [N])``, both on ``Z``'s device (random draws
    are made on the CPU, see :func:`_kmeanspp`; everything else stays on ``Z``'s device).
    """
    Z = F.normalize(Z.float(), dim=-1)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    if init is not None:
        c = F.normalize(init.float().to(Z.device).clone(), dim=-1)
    else:
        c = _kmeanspp(Z, G, gen)
    labels = torch.zeros(Z.shape[0], dtype=torch.long, device=Z.device)
    for _ in range(iters):
        sim = Z @ c.T
        new = sim.argmax(1)
        counts = torch.bincount(new, minlength=G)
        for g in torch.nonzero(counts == 0).flatten().tolist():  # re-seed empty groups
            far = int(sim.max(1).values.argmin())
            c[g] = Z[far]
            new[far] = g
            sim[far] = 2.0  # taken: no longer "far"
        if torch.equal(new, labels):
            break
        labels = new
        c = _centres(Z, labels, G, c)
    # KNN majority vote (own label breaks ties)
    k = min(knn, Z.shape[0] - 1)
    if k > 0:
        S = Z @ Z.T
        S.fill_diagonal_(-float("inf"))
        nn_idx = S.topk(k, dim=1).indices  # [N, k]
        votes = F.one_hot(labels[nn_idx], G).sum(1).float()  # [N, G]
        votes += 0.5 * F.one_hot(labels, G).float()
        labels = votes.argmax(1)
        c = _centres(Z, labels, G, c)
    return c, labels


# ---------------------------------------------------------------------------------------
# contrastive loss
# ---------------------------------------------------------------------------------------


def demographic_positives(
    demo: torch.Tensor, mask: torch.Tensor, k: int = 3, subject: torch.Tensor | None = None
) -> torch.Tensor:
    """Bool [B, B]: j is a positive of i if j is among i's ``k`` nearest neighbours in
    normalised demographic space (mean squared difference over the fields both know; pairs
    with no common field are never neighbours) or the same subject.  Diagonal is False."""
    B = demo.shape[0]
    both = mask[:, None, :] * mask[None, :, :]  # [B, B, F]
    diff2 = (demo[:, None, :] - demo[None, :, :]) ** 2
    n_common = both.sum(-1)
    dist = (both * diff2).sum(-1) / n_common.clamp(min=1.0)
    dist = torch.where(n_common > 0, dist, torch.full_like(dist, float("inf")))
    eye = torch.eye(B, dtype=torch.bool, device=demo.device)
    dist = dist.masked_fill(eye, float("inf"))
    kk = min(k, B - 1)
    pos = torch.zeros(B, B, dtype=torch.bool, device=demo.device)
    if kk > 0:
        val, idx = dist.topk(kk, dim=1, largest=False)
        pos.scatter_(1, idx, torch.isfinite(val))
    if subject is not None:
        pos |= subject[:, None] == subject[None, :]
    return pos & ~eye


def supcon_loss(z: torch.Tensor, positives: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Supervised-contrastive (InfoNCE with several positives) loss of unit vectors ``z``."""
    B = z.shape[0]
    eye = torch.eye(B, dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(eye, -1e9)
    logp = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = positives.float()
    n_pos = pos.sum(1)
    valid = n_pos > 0
    if not bool(valid.any()):
        return z.sum() * 0.0
    per = -(pos * logp).sum(1) / n_pos.clamp(min=1.0)
    return per[valid].mean()
