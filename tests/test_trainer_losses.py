"""Each ρ-generalised loss against a slow, obviously correct reference written with Python loops."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from trainer.objectives import InfoNCEQueueLoss, NegativeCosineLoss, NTXentLoss, SwaVLoss, sinkhorn

RHOS = [2, 3, 4]


def _unit(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(sum(float(x) * float(y) for x, y in zip(a, b)))


def _reduce(per_query: list[float], reduction: str) -> float:
    return sum(per_query) / len(per_query) if reduction == "mean" else sum(per_query)


# ----------------------------------------------------------------------------- MoCo
def moco_reference(q, k, queue, t, positives, reduction):
    rho, b, _ = q.shape
    per_query = []
    for i in range(rho):
        total, count = 0.0, 0
        for n in range(b):
            negs = [math.exp(_dot(q[i, n], queue[m]) / t) for m in range(queue.shape[0])]
            poss = [math.exp(_dot(q[i, n], k[j, n]) / t) for j in range(rho) if j != i]
            if positives == "eq1":
                total += -math.log(sum(poss) / (sum(poss) + sum(negs)))
                count += 1
            else:
                for p in poss:
                    total += -math.log(p / (p + sum(negs)))
                    count += 1
        per_query.append(total / count)
    return _reduce(per_query, reduction)


@pytest.mark.parametrize("rho", RHOS)
@pytest.mark.parametrize("positives", ["eq1", "per_positive"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_moco_loss_matches_reference(rho, positives, reduction):
    q, k, queue = _unit(rho, 5, 8, seed=rho), _unit(rho, 5, 8, seed=10 + rho), _unit(11, 8, seed=20 + rho)
    got = InfoNCEQueueLoss(0.1, positives, reduction)(q, k, queue)
    assert float(got) == pytest.approx(moco_reference(q, k, queue, 0.1, positives, reduction), rel=1e-9)


def test_moco_variants_agree_for_two_clips_and_differ_for_more():
    q, k, queue = _unit(2, 4, 8, seed=1), _unit(2, 4, 8, seed=2), _unit(6, 8, seed=3)
    a = InfoNCEQueueLoss(positives="eq1")(q, k, queue)
    b = InfoNCEQueueLoss(positives="per_positive")(q, k, queue)
    assert float(a) == pytest.approx(float(b), rel=1e-12)
    q, k = _unit(3, 4, 8, seed=1), _unit(3, 4, 8, seed=2)
    assert float(InfoNCEQueueLoss(positives="eq1")(q, k, queue)) != pytest.approx(
        float(InfoNCEQueueLoss(positives="per_positive")(q, k, queue)))


# ----------------------------------------------------------------------------- BYOL
def byol_reference(p, z, reduction):
    rho, b, _ = p.shape
    per_query = []
    for i in range(rho):
        terms = []
        for n in range(b):
            for j in range(rho):
                if j != i:
                    cos = _dot(p[i, n], z[j, n]) / math.sqrt(_dot(p[i, n], p[i, n]) * _dot(z[j, n], z[j, n]))
                    terms.append(-2.0 * cos)
        per_query.append(sum(terms) / len(terms))
    return _reduce(per_query, reduction)


@pytest.mark.parametrize("rho", RHOS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_byol_loss_matches_reference(rho, reduction):
    g = torch.Generator().manual_seed(rho)
    p, z = torch.randn(rho, 6, 5, generator=g, dtype=torch.float64), torch.randn(rho, 6, 5, generator=g, dtype=torch.float64)
    got = NegativeCosineLoss(reduction)(p, z)
    assert float(got) == pytest.approx(byol_reference(p, z, reduction), rel=1e-9)


def test_byol_loss_is_minus_two_for_identical_directions():
    p = torch.randn(3, 4, 6, dtype=torch.float64)
    z = 3.0 * p[[0, 0, 0]]  # every clip's target points the same way as clip 0's prediction
    p = p[[0, 0, 0]]
    assert float(NegativeCosineLoss()(p, z)) == pytest.approx(-2.0)


def test_byol_mean_is_half_the_byol_papers_gradient_and_sum_equals_it():
    """BYOL paper: L = (2 − 2cos(p₀, z₁)) + (2 − 2cos(p₁, z₀)), batch-averaged. For ρ = 2 our 'sum'
    is that minus 4 (same gradient); 'mean' (the ρ paper) is half of it."""
    g = torch.Generator().manual_seed(5)
    p0 = torch.randn(2, 6, 5, generator=g, dtype=torch.float64)
    z = torch.randn(2, 6, 5, generator=g, dtype=torch.float64)
    cos = lambda a, b: F.cosine_similarity(a, b, dim=1).mean()  # noqa: E731
    grads = {}
    for name, fn in [("paper", lambda p: (2 - 2 * cos(p[0], z[1])) + (2 - 2 * cos(p[1], z[0]))),
                     ("mean", NegativeCosineLoss("mean")), ("sum", NegativeCosineLoss("sum"))]:
        p = p0.clone().requires_grad_(True)
        loss = fn(p, z) if name != "paper" else fn(p)
        loss.backward()
        grads[name] = (float(loss.detach()), p.grad)
    assert grads["sum"][0] == pytest.approx(grads["paper"][0] - 4.0, rel=1e-12)
    torch.testing.assert_close(grads["sum"][1], grads["paper"][1])
    torch.testing.assert_close(grads["mean"][1], 0.5 * grads["paper"][1])


# ----------------------------------------------------------------------------- SimCLR
def ntxent_eq1_reference(z, t):
    """Per clip-index mean loss for z (P, B, D) normalised, the paper's eq. (1): each anchor's ONE
    numerator sums exp(sim/t) over its P−1 positives; the denominator is every other clip."""
    p_, b, _ = z.shape
    per_clip = []
    for i in range(p_):
        total = 0.0
        for n in range(b):
            numerator = 0.0
            denominator = 0.0
            for j in range(p_):
                for m in range(b):
                    if (j, m) == (i, n):
                        continue
                    e = math.exp(_dot(z[i, n], z[j, m]) / t)
                    denominator += e
                    if m == n:
                        numerator += e
            total += -math.log(numerator / denominator)
        per_clip.append(total / b)
    return per_clip


def ntxent_supcon_reference(z, t):
    """Per clip-index mean loss for z (P, B, D) normalised: each anchor averages -log p(positive)."""
    p_, b, _ = z.shape
    items = [(i, n) for i in range(p_) for n in range(b)]
    per_clip = []
    for i in range(p_):
        total = 0.0
        for n in range(b):
            denom = sum(math.exp(_dot(z[i, n], z[j, m]) / t) for (j, m) in items if (j, m) != (i, n))
            terms = [-math.log(math.exp(_dot(z[i, n], z[j, n]) / t) / denom) for j in range(p_) if j != i]
            total += sum(terms) / len(terms)
        per_clip.append(total / b)
    return per_clip


@pytest.mark.parametrize("rho", RHOS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_simclr_default_is_the_papers_eq1(rho, reduction):
    z = _unit(rho, 5, 6, seed=rho)
    got = NTXentLoss(0.1, "all", reduction)(z * 2.5)  # the default; the loss normalises itself
    assert float(got) == pytest.approx(_reduce(ntxent_eq1_reference(z, 0.1), reduction), rel=1e-9)


@pytest.mark.parametrize("rho", RHOS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_simclr_supcon_option_matches_reference(rho, reduction):
    z = _unit(rho, 5, 6, seed=rho)
    got = NTXentLoss(0.1, "all", reduction, positives="supcon")(z * 2.5)
    assert float(got) == pytest.approx(_reduce(ntxent_supcon_reference(z, 0.1), reduction), rel=1e-9)


def test_simclr_positive_forms_agree_for_two_clips_and_eq1_is_lower_for_more():
    z = _unit(2, 6, 8, seed=4)
    assert float(NTXentLoss(positives="eq1")(z)) == pytest.approx(float(NTXentLoss(positives="supcon")(z)), rel=1e-12)
    for rho in (3, 4):
        z = _unit(rho, 6, 8, seed=4)
        eq1, supcon = float(NTXentLoss(positives="eq1")(z)), float(NTXentLoss(positives="supcon")(z))
        # −log Σ_j p_j ≤ −mean_j log p_j, with equality only if all but one p_j vanish
        assert eq1 < supcon - 0.1


@pytest.mark.parametrize("rho", RHOS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("positives", ["eq1", "supcon"])
def test_simclr_consecutive_pairs_matches_reference(rho, reduction, positives):
    z = _unit(rho, 4, 6, seed=7 + rho)
    pairs = [sum(ntxent_eq1_reference(z[i : i + 2], 0.2)) / 2 for i in range(rho - 1)]
    got = NTXentLoss(0.2, "consecutive", reduction, positives=positives)(z)  # one positive per pair: forms agree
    assert float(got) == pytest.approx(_reduce(pairs, reduction), rel=1e-9)


def test_simclr_two_clips_equals_classic_ntxent():
    """For ρ = 2, the classic 2N×2N formulation (SimCLR paper) gives the same number."""
    z = _unit(2, 6, 8, seed=3)
    flat = torch.cat([z[0], z[1]])  # (2N, D)
    sim = flat @ flat.T / 0.1
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(6, 12), torch.arange(0, 6)])
    classic = F.cross_entropy(sim, target)
    assert float(NTXentLoss(0.1)(z)) == pytest.approx(float(classic), rel=1e-9)


# ----------------------------------------------------------------------------- SwAV
def sinkhorn_reference(scores, eps, iters):
    n, k = scores.shape
    q = [[math.exp(float(scores[r, c]) / eps) for r in range(n)] for c in range(k)]  # (K, N)
    total = sum(sum(row) for row in q)
    q = [[v / total for v in row] for row in q]
    for _ in range(iters):
        q = [[v / sum(row) / k for v in row] for row in q]
        cols = [sum(q[c][r] for c in range(k)) for r in range(n)]
        q = [[q[c][r] / cols[r] / n for r in range(n)] for c in range(k)]
    return torch.tensor([[q[c][r] * n for c in range(k)] for r in range(n)], dtype=torch.float64)


def test_sinkhorn_matches_reference():
    scores = _unit(6, 8, seed=0) @ _unit(5, 8, seed=1).T  # (N=6, K=5)
    got = sinkhorn(scores, 0.05, 3, distributed=False)
    torch.testing.assert_close(got, sinkhorn_reference(scores, 0.05, 3), rtol=1e-9, atol=1e-12)


def test_sinkhorn_output_is_doubly_stochastic():
    scores = _unit(40, 16, seed=2) @ _unit(10, 16, seed=3).T  # (N=40, K=10)
    codes = sinkhorn(scores, epsilon=0.5, iterations=200, distributed=False)
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(40, dtype=torch.float64))  # each sample: a distribution
    torch.testing.assert_close(codes.sum(dim=0), torch.full((10,), 4.0, dtype=torch.float64), rtol=1e-6, atol=1e-6)  # N/K each
    assert (codes >= 0).all()


def test_sinkhorn_rejects_bad_settings():
    with pytest.raises(ValueError, match="epsilon"):
        sinkhorn(torch.zeros(2, 3), epsilon=0.0)
    with pytest.raises(ValueError, match="iterations"):
        sinkhorn(torch.zeros(2, 3), iterations=0)


def swav_reference(scores, t, eps, iters, n_assign, reduction, queue_scores=None):
    rho, b, k = scores.shape
    per_assigned = []
    for i in range(n_assign):
        s = scores[i] if queue_scores is None else torch.cat([queue_scores[i], scores[i]])
        codes = sinkhorn_reference(s, eps, iters)[-b:]
        terms = []
        for v in range(rho):
            if v == i:
                continue
            total = 0.0
            for n in range(b):
                logz = math.log(sum(math.exp(float(scores[v, n, c]) / t) for c in range(k)))
                total += -sum(float(codes[n, c]) * (float(scores[v, n, c]) / t - logz) for c in range(k))
            terms.append(total / b)
        per_assigned.append(sum(terms) / len(terms))
    return _reduce(per_assigned, reduction)


@pytest.mark.parametrize("rho", RHOS)
@pytest.mark.parametrize("num_assign", [0, 2])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_swav_loss_matches_reference(rho, num_assign, reduction):
    scores = (_unit(rho, 5, 8, seed=rho).reshape(-1, 8) @ _unit(7, 8, seed=30).T).reshape(rho, 5, 7)
    got = SwaVLoss(0.1, 0.05, 3, num_assign, reduction, distributed=False)(scores)
    n_assign = rho if num_assign == 0 else 2
    assert float(got) == pytest.approx(swav_reference(scores, 0.1, 0.05, 3, n_assign, reduction), rel=1e-8)


def test_swav_loss_with_queue_matches_reference():
    scores = (_unit(3, 4, 8, seed=5).reshape(-1, 8) @ _unit(6, 8, seed=6).T).reshape(3, 4, 6)
    queue_scores = (_unit(3, 5, 8, seed=7).reshape(-1, 8) @ _unit(6, 8, seed=6).T).reshape(3, 5, 6)
    got = SwaVLoss(distributed=False)(scores, queue_scores)
    assert float(got) == pytest.approx(swav_reference(scores, 0.1, 0.05, 3, 3, "mean", queue_scores), rel=1e-8)


@pytest.mark.parametrize(
    "make", [lambda: InfoNCEQueueLoss(temperature=0.0), lambda: NTXentLoss(temperature=-1.0), lambda: SwaVLoss(temperature=0.0),
             lambda: InfoNCEQueueLoss(positives="some"), lambda: NTXentLoss(pairs="odd"), lambda: NTXentLoss(positives="mean"),
             lambda: NegativeCosineLoss("max")],
)
def test_losses_reject_bad_settings(make):
    with pytest.raises(ValueError):
        make()
