"""cglib.coherence and cglib.shares: the m-coherence properties of MC §3–4 on hand-made matrices,
the streamed model computation against brute-force per-example gradients (torch.func), and the
CG §2.4 loss-reduction shares against their per-example definition."""
from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from cglib.coherence import (alpha, alpha_from_stats, coherence_stats, m_coherence,
                             m_coherence_from_stats, model_coherence_stats, model_m_coherence)
from cglib.measuring import prime_batchnorm
from cglib.shares import LossShareTracker, loss_shares, null_designations


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _orthonormal(d, seed=0):
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=_gen(seed), dtype=torch.float64))
    return q


# =============================================================== MC §3–4 on hand-made matrices

def test_orthogonal_rows_sit_at_the_orthogonal_limit():
    m = 5
    norms = torch.tensor([0.1, 1.0, 2.0, 7.0, 30.0], dtype=torch.float64)
    g = _orthonormal(8)[:m] * norms[:, None]  # pairwise orthogonal, very different norms
    assert alpha(g) == pytest.approx(1 / m, rel=1e-12)
    assert m_coherence(g) == pytest.approx(1.0, rel=1e-12)


def test_identical_rows_reach_m():
    g = torch.randn(1, 13, generator=_gen(1), dtype=torch.float64).repeat(9, 1)
    assert alpha(g) == pytest.approx(1.0, rel=1e-12)
    assert m_coherence(g) == pytest.approx(9.0, rel=1e-12)


def test_boundedness_theorem_1():
    gen = _gen(2)
    for trial in range(50):
        m, d = int(torch.randint(2, 12, (1,), generator=gen)), int(torch.randint(1, 20, (1,), generator=gen))
        g = torch.randn(m, d, generator=gen, dtype=torch.float64) + 3 * torch.randn(d, generator=gen,
                                                                                   dtype=torch.float64)
        a = alpha(g)
        assert 0.0 <= a < 1.0  # rows differ, so strictly below 1
        assert 0.0 <= m_coherence(g) <= m
        assert m_coherence(g) == pytest.approx(m * a, rel=1e-12)


def test_alpha_is_zero_iff_the_mean_gradient_is_zero():
    g = torch.randn(6, 4, generator=_gen(3), dtype=torch.float64)
    centred = g - g.mean(0)
    assert alpha(centred) == pytest.approx(0.0, abs=1e-14)
    assert alpha(g) > 1e-3


def test_scale_invariance_lemma_2():
    g = torch.randn(7, 5, generator=_gen(4), dtype=torch.float64)
    for k in (-3.0, 1e-3, 1e4):
        assert alpha(k * g) == pytest.approx(alpha(g), rel=1e-12)


def test_invariant_to_row_order_and_orthogonal_change_of_coordinates():
    g = torch.randn(7, 5, generator=_gen(5), dtype=torch.float64) + 1.0
    perm = torch.randperm(7, generator=_gen(6))
    assert alpha(g[perm]) == pytest.approx(alpha(g), rel=1e-12)
    assert alpha(g @ _orthonormal(5, seed=7)) == pytest.approx(alpha(g), rel=1e-12)


def test_equals_the_pairwise_dot_product_forms_of_eq_3():
    g = torch.randn(6, 4, generator=_gen(8), dtype=torch.float64) + 0.5
    gram = g @ g.T
    mean_g = g.mean(0)
    assert alpha(g) == pytest.approx((gram.mean() / gram.diagonal().mean()).item(), rel=1e-12)
    assert alpha(g) == pytest.approx(((g @ mean_g).mean() / gram.diagonal().mean()).item(), rel=1e-12)


def test_stylized_minibatching_theorem_3_and_amplification():
    g = torch.randn(4, 3, generator=_gen(9), dtype=torch.float64) + 0.3
    a = alpha(g)
    for k in (2, 3):
        # the exact distribution of the mean of k i.i.d. uniform draws: all 4^k ordered tuples
        idx = torch.cartesian_prod(*[torch.arange(4)] * k).reshape(-1, k)
        w = g[idx].mean(1)
        assert alpha(w) == pytest.approx(k * a / (1 + (k - 1) * a), rel=1e-10)
        assert alpha(w) > a  # Corollary 3.1, strict since 0 < alpha < 1


def test_zero_gradients_lemma_4():
    g = torch.randn(5, 6, generator=_gen(10), dtype=torch.float64) + 1.0
    padded = torch.cat([g, torch.zeros(3, 6, dtype=torch.float64)])
    assert alpha(padded) == pytest.approx(5 / 8 * alpha(g), rel=1e-12)
    assert m_coherence(padded) == pytest.approx(m_coherence(g), rel=1e-12)  # m·alpha unchanged


def test_commonality_and_coherence_reduction_examples():
    m, d = 6, 10
    basis = _orthonormal(d, seed=11)
    c, u = 2.0 * basis[0], 1.5 * basis[1:m + 1]  # c ⟂ u_i, u_i ⟂ u_j, equal ‖u_i‖
    g = c + u
    f = (c @ c) / (c @ c + 1.5 ** 2)
    assert alpha(g) == pytest.approx(((1 + (m - 1) * f) / m).item(), rel=1e-12)
    k = 4
    n = m + k
    padded = torch.cat([g, torch.zeros(k, d, dtype=torch.float64)])
    assert alpha(padded) == pytest.approx(((1 + (n - k - 1) * f) / n).item(), rel=1e-12)
    one_left = torch.cat([g[:1], torch.zeros(n - 1, d, dtype=torch.float64)])
    assert alpha(one_left) == pytest.approx(1 / n, rel=1e-12)  # down to the orthogonal limit


def test_streamed_statistics_give_the_matrix_value():
    g = torch.randn(23, 9, generator=_gen(12), dtype=torch.float64) + 0.2
    total = torch.zeros(9, dtype=torch.float64)
    sq = 0.0
    for part in g.split(7):  # uneven chunks, as model_m_coherence streams them
        total += part.sum(0)
        sq += part.square().sum().item()
    stats = (total.square().sum().item(), sq, 23)
    assert alpha_from_stats(*stats) == pytest.approx(alpha(g), rel=1e-12)
    assert m_coherence_from_stats(*stats) == pytest.approx(m_coherence(g), rel=1e-12)
    assert tuple(coherence_stats(g)) == pytest.approx(stats, rel=1e-12)


def test_degenerate_inputs():
    assert math.isnan(alpha(torch.zeros(4, 3)))  # MC §4 leaves 0/0 undefined; we say so
    with pytest.raises(ValueError):
        alpha(torch.zeros(0, 3))
    with pytest.raises(ValueError):
        m_coherence(torch.ones(5))


# =============================================================== model_m_coherence vs brute force

def brute_force(model, x, y):
    """Per-example gradients materialized with torch.func, then m_coherence per module and "all"."""
    model.eval()
    params = {k: p.detach() for k, p in model.named_parameters()}

    def example_loss(ps, xi, yi):
        return F.cross_entropy(functional_call(model, ps, (xi[None],)), yi[None], reduction="sum")

    per = vmap(grad(example_loss), in_dims=(None, 0, 0))(params, x, y)
    out = {"all": m_coherence(torch.cat([g.flatten(1) for g in per.values()], 1))}
    for name, mod in model.named_modules():
        own = [f"{name}.{pn}" if name else pn for pn, _ in mod.named_parameters(recurse=False)]
        if own:
            out[name] = m_coherence(torch.cat([per[k].flatten(1) for k in own], 1))
    return out


class Scale(nn.Module):
    """A parameter-owning module with no closed form: exercises the vmap fallback."""

    def __init__(self, n):
        super().__init__()
        self.gain = nn.Parameter(1 + 0.1 * torch.randn(n))

    def forward(self, x):
        return x * self.gain


class Tokens(nn.Module):
    """Linear layers on (N, T, features) inputs (Gram form for embed, T² ≤ out·in; explicit
    per-example gradient for gate, T² > out·in), a module called twice (rerouted to the
    fallback), LayerNorm and a custom module (fallback)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(6, 8)
        self.gate = nn.Linear(8, 2)
        self.norm = nn.LayerNorm(8)
        self.mix = nn.Linear(8, 8)
        self.scale = Scale(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        h = torch.tanh(self.norm(self.embed(x)))
        h = h * torch.sigmoid(self.gate(h)).mean(-1, keepdim=True)
        h = torch.tanh(self.mix(torch.tanh(self.mix(h))))  # same module twice
        return self.head(self.scale(h).mean(1))


def mlp():
    # in-place ReLU: the output-grad hook must see the gradient of the Linear's own output
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(inplace=True), nn.Linear(16, 16), nn.Tanh(),
                         nn.Linear(16, 4))


def cnn():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(4, 6, 3, stride=2, dilation=2, groups=2), nn.ReLU(),
                         nn.Conv2d(6, 4, 2, padding="same", padding_mode="reflect"),
                         nn.Flatten(), nn.Linear(4 * 3 * 3, 4))


def bn_net():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.Flatten(),
                         nn.Linear(4 * 7 * 7, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4))


def norm_net():
    """Every normalisation layer with a closed form, in the layouts it takes: GroupNorm on (N, C,
    H, W) and on (N, C); InstanceNorm with instance statistics and with running ones (eval);
    LayerNorm over (C, H, W) and over the last dim without a bias."""
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.ReLU(), nn.InstanceNorm2d(4, affine=True),
                         nn.Conv2d(4, 4, 3, padding=1), nn.InstanceNorm2d(4, affine=True, track_running_stats=True),
                         nn.LayerNorm([4, 7, 7]), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 7 * 7, 8),
                         nn.GroupNorm(4, 8), nn.LayerNorm(8, bias=False), nn.ReLU(), nn.Linear(8, 4))


def seq_norm_net():
    """InstanceNorm1d on (N, C, L) and LayerNorm on (N, L, C) tokens."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.inorm = nn.Linear(3, 4), nn.InstanceNorm1d(4, affine=True)
            self.lnorm, self.head = nn.LayerNorm(4), nn.Linear(4, 4)

        def forward(self, x):  # x: (N, 5, 3)
            h = torch.tanh(self.inorm(self.embed(x).transpose(1, 2))).transpose(1, 2)  # (N, 5, 4)
            return self.head(self.lnorm(h).mean(1))
    return Net()


class ResBlock(nn.Module):
    """A ResNet basic block (conv-BN-ReLU-conv-BN plus the skip) and a head."""

    def __init__(self, c=4):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.head = nn.Linear(c, 4)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        out = torch.relu(self.bn1(self.conv1(h)))
        out = torch.relu(self.bn2(self.conv2(out)) + h)
        return self.head(out.mean((2, 3)))


CASES = {"mlp": (mlp, (10,)), "cnn": (cnn, (3, 9, 9)), "batchnorm": (bn_net, (3, 9, 9)),
         "tokens": (Tokens, (5, 6)), "norms": (norm_net, (3, 9, 9)), "seq_norms": (seq_norm_net, (5, 3)),
         "resblock": (ResBlock, (3, 6, 6))}


@pytest.mark.parametrize("case", CASES)
def test_model_m_coherence_equals_brute_force(case):
    torch.manual_seed(0)
    build, shape = CASES[case]
    model = build()
    m = 23
    x, y = torch.randn(m, *shape), torch.randint(0, 4, (m,))
    if case in ("batchnorm", "resblock"):
        prime_batchnorm(model, x, batch_size=8)
    reference = brute_force(copy.deepcopy(model), x, y)
    assert len(reference) > 2
    for chunk_size in (m, 7, 1):  # 7 does not divide 23: a short last chunk
        got = model_m_coherence(model, x, y, chunk_size=chunk_size)
        assert got.keys() == reference.keys()
        for key in reference:
            assert got[key] == pytest.approx(reference[key], rel=1e-4), (case, chunk_size, key)


def test_model_m_coherence_leaves_the_model_as_it_was():
    torch.manual_seed(1)
    model = bn_net()
    model.train()
    model[5].eval()  # a deliberately mixed state must survive
    model[0].weight.grad = torch.ones_like(model[0].weight)
    before = copy.deepcopy(model.state_dict())
    x, y = torch.randn(12, 3, 9, 9), torch.randint(0, 4, (12,))
    model_m_coherence(model, x, y, chunk_size=5)
    assert [m.training for m in model.modules()] == [True] * 6 + [False, True, True]
    assert torch.equal(model[0].weight.grad, torch.ones_like(model[0].weight))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "0.weight")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_prime_bn_flag_measures_on_primed_statistics_then_restores_them():
    torch.manual_seed(2)
    model = bn_net()
    x, y = torch.randn(20, 3, 9, 9) + 2.0, torch.randint(0, 4, (20,))
    stale = copy.deepcopy(model.state_dict())
    primed = prime_batchnorm(copy.deepcopy(model), x, batch_size=6)
    expected = model_m_coherence(primed, x, y, chunk_size=6)
    got = model_m_coherence(model, x, y, chunk_size=6, prime_bn=True)
    assert got == pytest.approx(expected, rel=1e-6)
    assert got["all"] != pytest.approx(model_m_coherence(model, x, y)["all"], rel=1e-3)
    assert all(torch.equal(stale[k], v) for k, v in model.state_dict().items())


def test_prime_batchnorm_is_a_cumulative_average_over_the_sample():
    bn = nn.BatchNorm1d(3, momentum=0.3)
    model = nn.Sequential(bn).eval()
    x = torch.randn(40, 3) * 2 + 5
    prime_batchnorm(model, x, batch_size=10)  # 4 equal batches: average of means = sample mean
    assert torch.allclose(bn.running_mean, x.mean(0), atol=1e-5)
    assert int(bn.num_batches_tracked) == 4
    assert bn.momentum == 0.3 and not bn.training
    prime_batchnorm(model, x[:21], batch_size=10)  # 21 = 2·10 + 1: no batch of one example
    assert int(bn.num_batches_tracked) == 2


def test_batchnorm_without_running_statistics_is_refused():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3, track_running_stats=False))
    with pytest.raises(ValueError, match="running statistics"):
        model_m_coherence(model, torch.randn(6, 4), torch.randint(0, 3, (6,)))


def test_stats_give_alpha_and_scale_like_the_metric():
    torch.manual_seed(3)
    model = mlp()
    x, y = torch.randn(30, 10), torch.randint(0, 4, (30,))
    stats = model_coherence_stats(model, x, y, chunk_size=8)
    values = model_m_coherence(model, x, y, chunk_size=8)
    for key, s in stats.items():
        assert s.m == 30
        assert s.alpha == pytest.approx(values[key] / 30, rel=1e-12)
        assert 0 < s.alpha <= 1


# =============================================================== loss-reduction shares (CG §2.4)

def per_example_shares(model, x, y, mask):
    """⟨g, g⟩ and ⟨g, g^p⟩ from the per-example definition: g = Σ g_i, g^p = Σ_{i∈p} g_i."""
    model.eval()
    params = {k: p.detach().double() for k, p in model.named_parameters()}
    model64 = copy.deepcopy(model).double()

    def example_loss(ps, xi, yi):
        return F.cross_entropy(functional_call(model64, ps, (xi[None],)), yi[None], reduction="sum")

    per = vmap(grad(example_loss), in_dims=(None, 0, 0))(params, x.double(), y)
    flat = torch.cat([g.flatten(1) for g in per.values()], 1)
    g, gp = flat.sum(0), flat[mask].sum(0)
    return (g @ g).item(), (g @ gp).item()


def _data(n=40, seed=4):
    gen = _gen(seed)
    x = torch.randn(n, 10, generator=gen)
    y = torch.randint(0, 4, (n,), generator=gen)
    pristine = torch.randperm(n, generator=gen) < int(0.7 * n)  # 28 of 40: both passes differ
    return x, y, pristine


@pytest.mark.parametrize("method", ["jvp", "backward"])
def test_loss_shares_match_the_per_example_definition(method):
    torch.manual_seed(5)
    model = mlp()
    x, y, pristine = _data()
    masks = [pristine, ~pristine, *null_designations(pristine, 2, seed=1)]  # > and < half pristine
    got = loss_shares(model, x, y, masks, chunk_size=9, method=method)
    assert got["method"] == method
    for mask, g_gp in zip(masks, got["g_gp"]):
        gg, ref = per_example_shares(model, x, y, mask)
        assert got["gg"] == pytest.approx(gg, rel=1e-5)
        assert g_gp == pytest.approx(ref, rel=1e-4, abs=1e-6 * gg)


def test_loss_shares_on_batchnorm_measure_primed_statistics_and_restore_them():
    torch.manual_seed(6)
    model = bn_net()
    x, y = torch.randn(30, 3, 9, 9) + 1.5, torch.randint(0, 4, (30,))  # stale (0, 1) statistics
    mask = torch.arange(30) % 3 > 0
    stale = copy.deepcopy(model.state_dict())
    primed = prime_batchnorm(copy.deepcopy(model), x, batch_size=8)
    gg, ref = per_example_shares(primed, x, y, mask)
    got = loss_shares(model, x, y, [mask], chunk_size=8, method="jvp")
    assert got["gg"] == pytest.approx(gg, rel=1e-5)
    assert got["g_gp"][0] == pytest.approx(ref, rel=1e-4, abs=1e-6 * gg)
    unprimed = loss_shares(model, x, y, [mask], chunk_size=8, prime_bn=False)
    assert unprimed["gg"] != pytest.approx(gg, rel=1e-2)  # priming changed what is measured
    assert all(torch.equal(stale[k], v) for k, v in model.state_dict().items())


def test_prime_batchnorm_consumes_no_random_numbers():
    model = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Dropout(0.5), nn.Linear(6, 2))
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    prime_batchnorm(model, torch.randn(20, 5, generator=_gen(1)), batch_size=7)
    assert torch.equal(torch.rand(3), expected)


class NoForwardAD(torch.autograd.Function):
    generate_vmap_rule = True  # the brute-force reference vmaps through it

    @staticmethod
    def forward(x):
        return x.clamp(min=0)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x > 0)


def test_auto_falls_back_to_masked_backward_passes_without_forward_ad():
    torch.manual_seed(6)
    lin1, lin2 = nn.Linear(10, 8), nn.Linear(8, 4)
    model = nn.Sequential(lin1, nn.Module(), lin2)
    model[1].forward = NoForwardAD.apply
    x, y, pristine = _data()
    with pytest.raises((RuntimeError, NotImplementedError)):
        loss_shares(model, x, y, [pristine], method="jvp")
    with pytest.warns(UserWarning, match="forward-mode"):
        got = loss_shares(model, x, y, [pristine], method="auto")
    assert got["method"] == "backward"
    assert got["g_gp"][0] == pytest.approx(per_example_shares(model, x, y, pristine)[1], rel=1e-4)


def test_null_designations_keep_group_sizes_and_differ_from_the_real_one():
    pristine = torch.tensor([False, True, False, False])  # a permutation repeats it 1 time in 4
    nulls = null_designations(pristine, 20, seed=7)
    assert len(nulls) == 20
    for mask in nulls:
        assert int(mask.sum()) == 1
        assert not torch.equal(mask, pristine)
    big = torch.arange(30) % 3 == 0
    assert all(int(mask.sum()) == 10 and not torch.equal(mask, big) for mask in null_designations(big, 5, 0))
    again = null_designations(pristine, 20, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(nulls, again))
    other = null_designations(pristine, 20, seed=8)
    assert not all(torch.equal(a, b) for a, b in zip(nulls, other))
    assert null_designations(torch.ones(10, dtype=torch.bool), 3, seed=0) == []


def _train_step(model, x, y, lr=0.05):
    model.train()
    loss = F.cross_entropy(model(x), y)
    model.zero_grad()
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= lr * p.grad
    model.zero_grad(set_to_none=True)


def test_tracker_rows_and_cumulative_sums():
    torch.manual_seed(8)
    model = mlp()
    x, y, pristine = _data()
    tracker = LossShareTracker(pristine, k_nulls=3, seed=0, chunk_size=16)
    n_p, n_c = int(pristine.sum()), int((~pristine).sum())
    cum_p = cum_c = 0.0
    for _ in range(3):
        gg, gp = per_example_shares(copy.deepcopy(model), x, y, pristine)
        model.train()
        cum_p, cum_c = cum_p + gp, cum_c + gg - gp
        rows = tracker.update(model, x, y)
        assert [r["null"] for r in rows] == [-1, 0, 1, 2]
        for r in rows:
            assert set(r) == {"null", "f_pristine", "f_corrupt", "i_pristine", "i_corrupt"}
            assert r["f_pristine"] + r["f_corrupt"] == pytest.approx(1.0, abs=1e-12)
        assert rows[0]["f_pristine"] == pytest.approx(gp / gg, rel=1e-4)
        assert rows[0]["i_pristine"] == pytest.approx(cum_p / n_p, rel=1e-4)
        assert rows[0]["i_corrupt"] == pytest.approx(cum_c / n_c, rel=1e-4, abs=1e-6 * abs(cum_p))
        assert rows[1]["f_pristine"] != pytest.approx(rows[0]["f_pristine"], rel=1e-3)
        assert all(p.grad is None for p in model.parameters())
        assert model.training  # measured in eval mode, then put back
        _train_step(model, x, y)
    assert tracker.steps == 3 and tracker.note is None


def test_no_corrupt_or_no_pristine_examples_are_handled_cleanly():
    torch.manual_seed(9)
    model = mlp()
    x, y, _ = _data()
    for pristine, present, absent, f_p in [(torch.ones(40, dtype=torch.bool), "i_pristine", "i_corrupt", 1.0),
                                           (torch.zeros(40, dtype=torch.bool), "i_corrupt", "i_pristine", 0.0)]:
        tracker = LossShareTracker(pristine, k_nulls=3, seed=0)
        assert tracker.nulls == [] and "null worlds are skipped" in tracker.note
        for _ in range(2):
            rows = tracker.update(model, x, y)
            _train_step(model, x, y)
        assert len(rows) == 1 and rows[0]["null"] == -1
        assert rows[0]["f_pristine"] == f_p and rows[0]["f_corrupt"] == 1.0 - f_p
        assert present in rows[0] and absent not in rows[0]
        assert all(math.isfinite(v) for v in rows[0].values())


def test_tracker_state_dict_round_trip_continues_identically():
    torch.manual_seed(10)
    model = mlp()
    x, y, pristine = _data()
    tracker = LossShareTracker(pristine, k_nulls=2, seed=3, chunk_size=16)
    for _ in range(2):
        tracker.update(model, x, y)
        _train_step(model, x, y)
    buffer = io.BytesIO()
    torch.save({"tracker": tracker.state_dict(), "model": model.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    resumed_model = mlp()
    resumed_model.load_state_dict(saved["model"])
    resumed = LossShareTracker(pristine, k_nulls=2, seed=3, chunk_size=16)
    resumed.load_state_dict(saved["tracker"])
    for _ in range(2):
        assert resumed.update(resumed_model, x, y) == tracker.update(model, x, y)
        _train_step(model, x, y)
        _train_step(resumed_model, x, y)
    assert resumed.steps == tracker.steps == 4
    with pytest.raises(ValueError):
        LossShareTracker(~pristine, k_nulls=2, seed=3).load_state_dict(tracker.state_dict())


# ------------------------------------------------------------------ BatchNorm priming (MC app. B)
def _bn_cnn():
    from cglib.models import cnn
    torch.manual_seed(0)
    return cnn((1, 8, 8), [4, 6], 3)


def _func_m_coherence(model, x, y):
    """m-coherence per module and "all" from torch.func per-example gradients, eval mode."""
    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v for k, v in model.named_buffers()}

    def loss(ps, xi, yi):
        return F.cross_entropy(functional_call(model, (ps, buffers), (xi[None],)), yi[None])
    per = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    owners = {}
    for name, g in per.items():
        owners.setdefault(name.rsplit(".", 1)[0], []).append(g.reshape(len(x), -1))
    owners["all"] = [g.reshape(len(x), -1) for g in per.values()]
    out = {}
    for owner, gs in owners.items():
        G = torch.cat(gs, 1).double()
        out[owner] = (G.sum(0).square().sum() / G.square().sum()).item()
    return out


def test_mc_priming_then_e7_equals_torch_func_on_the_model_primed_once_at_any_chunk_size():
    """MC appendix B: 40 training-mode forward passes on minibatches, nothing else changes; E7
    then measures in eval mode on those statistics: the torch.func value, whatever the chunk."""
    from cglib.measuring import prime_batchnorm_mc
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(90, 1, 8, 8, generator=g) * 2 + 0.7, torch.randint(0, 3, (90,), generator=g)
    batches = [x[torch.randint(0, 90, (15,), generator=g)] for _ in range(40)]
    model, by_hand = _bn_cnn(), _bn_cnn()
    by_hand.train()
    with torch.no_grad():
        for b in batches:
            by_hand(b)  # a training step's forward pass, with a no-op optimizer
    params = copy.deepcopy(dict(model.named_parameters()))
    model.eval()
    assert prime_batchnorm_mc(model, iter(batches)) == 40
    assert not model.training  # its flags are put back
    for (k, a), b in zip(model.state_dict().items(), by_hand.state_dict().values()):
        assert torch.equal(a, b), k  # the same running statistics and batch counts
    assert all(torch.equal(p, params[k]) for k, p in model.named_parameters())
    assert not torch.equal(model[1].running_mean, torch.zeros(4))  # primed, not the initial 0

    xs, ys = x[:37], y[:37]
    want = _func_m_coherence(copy.deepcopy(by_hand), xs, ys)
    for chunk in (5, 16, 1024):
        got = model_m_coherence(model, xs, ys, chunk_size=chunk, prime_bn=False)
        assert set(got) == set(want)
        for k in want:
            assert got[k] == pytest.approx(want[k], rel=1e-5), (chunk, k)  # float32 gradients
    # the statistics are training's: measuring leaves them as they were
    for (k, a), b in zip(model.state_dict().items(), by_hand.state_dict().values()):
        assert torch.equal(a, b), k


def test_mc_priming_is_a_no_op_without_batchnorm():
    from cglib.measuring import prime_batchnorm_mc
    model = nn.Sequential(nn.Linear(3, 2))
    before = copy.deepcopy(model.state_dict())
    assert prime_batchnorm_mc(model, [torch.randn(4, 3)]) == 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_label_part_coherence_is_that_of_the_label_dependent_gradients():
    """loss="label_part" measures the gradients of mean_k z_k − z_y, torch.func's value, and
    those are the cross-entropy gradients minus the gradients against a uniform target (the
    part that does not depend on the label)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(7, 9), nn.ReLU(), nn.Linear(9, 4))
    g = _gen(4)
    x, y = torch.randn(50, 7, generator=g) + 1.0, torch.randint(0, 4, (50,), generator=g)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def per_example(loss):
        grads = vmap(grad(lambda ps, xi, yi: loss(functional_call(model, ps, (xi[None],))[0], yi)),
                     in_dims=(None, 0, 0))(params, x, y)
        return torch.cat([v.reshape(50, -1) for v in grads.values()], 1).double()
    label = per_example(lambda z, yi: z.mean() - z.gather(0, yi[None]).sum())
    ce = per_example(lambda z, yi: F.cross_entropy(z[None], yi[None]))
    uniform = per_example(lambda z, yi: -(torch.log_softmax(z, 0)).mean())
    torch.testing.assert_close(ce - uniform, label, rtol=1e-5, atol=1e-7)
    want = (label.sum(0).square().sum() / label.square().sum()).item()
    for chunk in (7, 64):
        got = model_coherence_stats(model, x, y, chunk_size=chunk, loss="label_part")
        assert got["all"].m_coherence == pytest.approx(want, rel=1e-5)
    assert model_coherence_stats(model, x, y)["all"].m_coherence != pytest.approx(want, rel=1e-3)
    with pytest.raises(ValueError, match="loss must be one of"):
        model_coherence_stats(model, x, y, loss="hinge")


# =============================================================== boundaries, routing, edge cases

def test_statistics_at_their_boundaries():
    assert alpha_from_stats(2.0, 1.0, 4) == 0.5  # Σ‖g_i‖² = 1 is a value like any other
    assert m_coherence_from_stats(2.0, 1.0, 4) == 2.0
    assert alpha_from_stats(3.0, 3.0, 1) == 1.0  # one example: alpha = m-coherence = 1
    assert math.isnan(m_coherence_from_stats(0.0, 0.0, 3))
    with pytest.raises(ValueError, match="at least one example"):
        alpha_from_stats(1.0, 1.0, 0)
    one = torch.tensor([[3.0, -4.0]])
    assert tuple(coherence_stats(one)) == (25.0, 25.0, 1) and m_coherence(one) == 1.0
    assert tuple(coherence_stats(torch.ones(2, 2, 3))) == (24.0, 12.0, 2)  # trailing dims flattened
    for bad in (torch.zeros(0, 3), torch.ones(5), torch.zeros(0, 2, 2)):
        with pytest.raises(ValueError, match=r"expected an \(m, d\) tensor"):
            coherence_stats(bad)


def _spy_fallback(monkeypatch):
    """Record the parameter names of every per-example (vmap) pass of the fallback."""
    import cglib.coherence as coherence
    seen = []

    def spy(fn, in_dims):
        run = vmap(fn, in_dims=in_dims)

        def call(ps, *args):
            seen.append(sorted(ps))
            return run(ps, *args)
        return call
    monkeypatch.setattr(coherence, "vmap", spy)
    return seen


@pytest.mark.parametrize("case, fallback", [
    ("mlp", []), ("cnn", []), ("batchnorm", []), ("norms", []), ("seq_norms", []), ("resblock", []),
    ("tokens", [["mix.bias", "mix.weight", "scale.gain"]] * 2)])
def test_closed_forms_where_they_apply_and_a_vmap_pass_only_for_the_rest(case, fallback, monkeypatch):
    """Linear, Conv2d and the normalisation layers use their closed forms; a custom module and a
    module called twice go through one vmap pass per chunk, of their own parameters only."""
    torch.manual_seed(0)
    build, shape = CASES[case]
    model = build()
    x, y = torch.randn(10, *shape), torch.randint(0, 4, (10,))
    seen = _spy_fallback(monkeypatch)
    got = model_m_coherence(model, x, y, chunk_size=5)
    assert seen == fallback
    reference = brute_force(copy.deepcopy(model), x, y)
    assert got == pytest.approx(reference, rel=1e-4)


class Tied(nn.Module):
    """Two Linear layers sharing one weight (each owns it: its own norm is not a sum of two
    closed forms), and a trainable parameter the loss never reaches (a zero gradient)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.b.weight = self.a.weight
        self.out = nn.Linear(4, 3)
        self.unused = nn.Parameter(torch.ones(2))

    def forward(self, x):
        return self.out(torch.tanh(self.b(torch.tanh(self.a(x)))))


def test_a_shared_parameter_goes_to_the_fallback_once_and_an_unused_one_counts_zero(monkeypatch):
    torch.manual_seed(4)
    model = Tied()
    x, y = torch.randn(9, 4), torch.randint(0, 3, (9,))
    seen = _spy_fallback(monkeypatch)
    got = model_coherence_stats(model, x, y, chunk_size=9)
    # the shared weight once, under its first name; the root's own parameter has no closed form
    assert seen == [["a.bias", "a.weight", "b.bias", "unused"]]
    params = {k: p.detach() for k, p in model.named_parameters()}

    def example_loss(ps, xi, yi):
        return F.cross_entropy(functional_call(model, ps, (xi[None],)), yi[None], reduction="sum")

    per = {k: v.flatten(1) for k, v in vmap(grad(example_loss), in_dims=(None, 0, 0))(params, x, y).items()}
    assert torch.equal(per["unused"], torch.zeros(9, 2))
    want = {"all": torch.cat(list(per.values()), 1), "a": torch.cat([per["a.weight"], per["a.bias"]], 1),
            "b": torch.cat([per["a.weight"], per["b.bias"]], 1),
            "out": torch.cat([per["out.weight"], per["out.bias"]], 1), "": per["unused"]}
    assert list(got) == ["all", "", "a", "b", "out"]
    for key, g in want.items():
        s = coherence_stats(g)
        assert got[key].m == 9
        assert got[key].sq_norm_of_sum == pytest.approx(s.sq_norm_of_sum, rel=1e-4, abs=1e-9), key
        assert got[key].sum_of_sq_norms == pytest.approx(s.sum_of_sq_norms, rel=1e-4, abs=1e-9), key
    assert math.isnan(got[""].m_coherence)


@pytest.mark.parametrize("conv, size", [
    (dict(kernel_size=(2, 4), dilation=(2, 1), padding="same"), (6, 7)),     # uneven 'same' padding
    (dict(kernel_size=(3, 2), dilation=(1, 2), padding="valid", stride=(1, 2)), (6, 7)),
    (dict(kernel_size=3, padding=(2, 1), padding_mode="circular"), (6, 7)),
    (dict(kernel_size=3, padding="same", padding_mode="reflect"), (2, 2)),  # reflect allows 1, not 2
    (dict(kernel_size=1, padding="valid", padding_mode="reflect"), (1, 1)),  # reflect allows none here
])
@pytest.mark.parametrize("c_in", [2, 8])  # both forms: patches below 8 input channels, grouped from 8
def test_conv2d_closed_form_for_each_padding(conv, size, c_in):
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(c_in, 3, **conv), nn.Tanh(), nn.Flatten(), nn.LazyLinear(4))
    x, y = torch.randn(7, c_in, *size), torch.randint(0, 4, (7,))
    model(x)  # materialize the lazy layer
    got = model_m_coherence(model, x, y, chunk_size=7)
    assert got == pytest.approx(brute_force(copy.deepcopy(model), x, y), rel=1e-4)


@pytest.mark.parametrize("conv", [
    dict(in_channels=8, out_channels=6, kernel_size=3, padding=1),
    dict(in_channels=16, out_channels=4, kernel_size=(3, 2), stride=(2, 1), dilation=(1, 2), groups=2, bias=False),
    dict(in_channels=8, out_channels=8, kernel_size=2, stride=2, groups=8),
    dict(in_channels=8, out_channels=3, kernel_size=3, padding="same", padding_mode="circular"),
])
def test_conv2d_grouped_and_patches_forms_agree(conv, monkeypatch):
    """The two closed forms of a Conv2d's per-example weight gradients give the same numbers, also
    when the grouped one works through several blocks of examples; the picked form's squared
    norms are those of its gradients."""
    import cglib.layer_rules as rules
    torch.manual_seed(8)
    mod = nn.Conv2d(**conv)
    a = torch.randn(9, conv["in_channels"], 7, 6)
    d = torch.randn_like(mod(a))
    patches = torch.cat(list(rules._conv2d_weight_blocks_patches(mod, a, d)))
    grads = rules._conv2d_grads(mod, a, d)  # grouped from 8 input channels per group on
    want = (torch.cat(list(rules._conv2d_weight_blocks_grouped(mod, a, d)))
            if conv["in_channels"] // mod.groups >= 8 else patches)
    assert torch.equal(grads["weight"], want) and grads["weight"].shape == (9, *mod.weight.shape)
    norms = rules._conv2d_sq_norms(mod, a, d)
    assert torch.equal(norms["weight"], want.square().flatten(1).sum(1))
    assert torch.equal(norms["bias"], grads["bias"].square().sum(1))
    monkeypatch.setattr(rules, "_BLOCK_ELEMENTS", 2 * (mod.weight.numel() + a[0].numel() + d[0].numel()))
    blocks = list(rules._conv2d_weight_blocks_grouped(mod, a, d))  # of 2 examples (1 if padded)
    assert sum(len(b) for b in blocks) == 9 and 1 <= len(blocks[0]) <= 2 and len(blocks) >= 5
    torch.testing.assert_close(torch.cat(blocks), patches, rtol=1e-5, atol=1e-6)


def _per_example_norms(model, x, y):
    model.eval()
    params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    frozen = {k: p.detach() for k, p in model.named_parameters() if not p.requires_grad}
    buffers = dict(model.named_buffers())

    def example_loss(ps, xi, yi):
        out = functional_call(model, (ps, frozen, buffers), (xi[None],))
        return F.cross_entropy(out, yi[None], reduction="sum")

    per = vmap(grad(example_loss), in_dims=(None, 0, 0))(params, x, y)
    return torch.cat([v.flatten(1) for v in per.values()], 1).double().square().sum(1)


@pytest.mark.parametrize("case", ["mlp", "cnn", "tokens", "batchnorm", "norms", "seq_norms", "resblock"])
@pytest.mark.parametrize("m, chunk", [(11, 4), (1, 1)])  # a short last chunk; a batch of one
def test_per_example_sq_norms_equal_torch_func(case, m, chunk):
    from cglib.coherence import per_example_sq_norms
    torch.manual_seed(6)
    build, shape = CASES[case]
    model = build()
    x, y = torch.randn(m, *shape) + 1.0, torch.randint(0, 4, (m,))  # BatchNorm statistics stale
    want = _per_example_norms(copy.deepcopy(model), x, y)
    got = per_example_sq_norms(model, x, y, chunk_size=chunk)  # default prime_bn=False: as they are
    assert got.dtype == torch.float64 and got.shape == (m,)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("case", ["norms", "seq_norms", "resblock"])
def test_normalisation_layers_take_their_closed_form_in_the_per_example_norms_too(case, monkeypatch):
    from cglib.coherence import per_example_sq_norms
    seen = _spy_fallback(monkeypatch)
    build, shape = CASES[case]
    per_example_sq_norms(build(), torch.randn(5, *shape), torch.randint(0, 4, (5,)))
    assert seen == []


def test_per_example_sq_norms_ask_for_no_parameter_gradient(monkeypatch):
    """Only the layers' output gradients are computed: autograd is never asked for a parameter."""
    from cglib.coherence import per_example_sq_norms
    asked = []
    real = torch.autograd.grad

    def spy(outputs, inputs, *args, **kwargs):
        asked.extend([inputs] if isinstance(inputs, torch.Tensor) else list(inputs))
        return real(outputs, inputs, *args, **kwargs)
    monkeypatch.setattr(torch.autograd, "grad", spy)
    model = mlp()
    per_example_sq_norms(model, torch.randn(6, 10), torch.randint(0, 4, (6,)))
    params = {id(p) for p in model.parameters()}
    assert asked and not any(id(t) in params for t in asked)


class _OneParameterEach(nn.Module):
    """Layers that train their weight alone or their bias alone (bias=False, or one frozen), so
    that a rule's weight norm handed over as the bias norm (or back) changes the result."""

    def __init__(self):
        super().__init__()
        self.lin, self.bn = nn.Linear(10, 6, bias=False), nn.BatchNorm1d(6)
        self.tokens, self.norm = nn.Linear(2, 4, bias=False), nn.LayerNorm(4, bias=False)
        self.head = nn.Linear(4, 4)
        self.bn.bias.requires_grad_(False)
        self.head.weight.requires_grad_(False)  # the bias alone
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5), self.bn.bias.uniform_(-1, 1)

    def forward(self, x):  # x: (N, 10)
        h = torch.tanh(self.bn(self.lin(x))).reshape(len(x), 3, 2)
        return self.head(self.norm(self.tokens(h)).mean(1))


def test_per_example_sq_norms_of_layers_training_one_parameter():
    from cglib.coherence import per_example_sq_norms
    torch.manual_seed(10)
    model = _OneParameterEach()
    x, y = torch.randn(7, 10), torch.randint(0, 4, (7,))
    want = _per_example_norms(copy.deepcopy(model), x, y)
    torch.testing.assert_close(per_example_sq_norms(model, x, y, chunk_size=4), want, rtol=1e-5, atol=1e-8)


class _SideBranch(nn.Module):
    """A Linear whose output is computed and thrown away: the only tapped module never reaches
    the loss, which flows through a parameter of the root module (measured by vmap)."""

    def __init__(self):
        super().__init__()
        self.side, self.scale = nn.Linear(10, 4), nn.Parameter(torch.randn(10, 4))

    def forward(self, x):
        self.side(x)
        return x @ self.scale


def test_per_example_sq_norms_when_a_tapped_layer_never_reaches_the_loss():
    """Its gradient is zero, so it adds nothing; the tap's anchor is then unused by the loss,
    which autograd must be told is fine (allow_unused)."""
    from cglib.coherence import per_example_sq_norms
    torch.manual_seed(9)
    model = _SideBranch()
    x, y = torch.randn(5, 10), torch.randint(0, 4, (5,))
    want = _per_example_norms(copy.deepcopy(model), x, y)
    torch.testing.assert_close(per_example_sq_norms(model, x, y), want, rtol=1e-5, atol=1e-8)


def test_model_coherence_stats_uses_the_statistics_as_they_are_by_default():
    torch.manual_seed(7)
    model = bn_net()
    x, y = torch.randn(8, 3, 9, 9) + 2.0, torch.randint(0, 4, (8,))
    stale = model_coherence_stats(model, x, y, chunk_size=8, prime_bn=False)
    assert model_coherence_stats(model, x, y, chunk_size=8) == stale
    assert model_coherence_stats(model, x, y, chunk_size=8, prime_bn=True)["all"] != stale["all"]


def test_inputs_are_checked():
    model = nn.Linear(3, 2)
    one = model_m_coherence(model, torch.randn(1, 3), torch.tensor([1]))
    assert one == {"all": pytest.approx(1.0), "": pytest.approx(1.0)}  # one example: the orthogonal limit
    for x, y in [(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)), (torch.randn(3, 3), torch.tensor([0, 1]))]:
        with pytest.raises(ValueError, match="need matching non-empty x and y"):
            model_m_coherence(model, x, y)
    named_all = nn.Sequential()
    named_all.add_module("all", nn.Linear(3, 2))
    with pytest.raises(ValueError, match='named "all"'):
        model_coherence_stats(named_all, torch.randn(4, 3), torch.zeros(4, dtype=torch.long))


def test_an_unknown_loss_is_refused_with_the_known_ones_named():
    from cglib.coherence import LOSSES, _loss_sum
    assert LOSSES == ("cross_entropy", "label_part")
    z, y = torch.zeros(2, 3), torch.tensor([0, 2])
    assert _loss_sum("label_part", z, y).item() == 0.0
    with pytest.raises(ValueError, match=r"^loss must be one of \('cross_entropy', 'label_part'\), got 'hinge'$"):
        _loss_sum("hinge", z, y)


@pytest.mark.parametrize("case", ["tokens", "cnn"])
def test_blocks_of_one_example_when_one_example_fills_a_block(case, monkeypatch):
    """A per-example intermediate larger than a block (here: a block of one element) still gets
    blocks of one example, not of none."""
    import cglib.layer_rules as rules
    monkeypatch.setattr(rules, "_BLOCK_ELEMENTS", 1)
    torch.manual_seed(8)
    build, shape = CASES[case]
    model = build()
    x, y = torch.randn(5, *shape), torch.randint(0, 4, (5,))
    assert model_m_coherence(model, x, y, chunk_size=5) == pytest.approx(brute_force(copy.deepcopy(model), x, y),
                                                                          rel=1e-4)


class NotPerExample(nn.Module):
    """Linear layers whose input has no batch in dim 0 — a 1-D buffer as long as the chunk, a
    (2, 5) buffer — and one called under no_grad: no closed form applies to them, the fallback's
    exact per-example gradients do (zero for the no_grad one)."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 3)
        self.vec, self.mat, self.frozen = nn.Linear(5, 3), nn.Linear(5, 3), nn.Linear(4, 3)
        self.register_buffer("z", torch.randn(5))
        self.register_buffer("zz", torch.randn(2, 5))

    def forward(self, x):
        with torch.no_grad():
            t = self.frozen(x)
        return self.head(x) * (1 + t.tanh()) + self.vec(self.z) + self.mat(self.zz).mean(0)


def test_layers_without_a_batch_dimension_or_a_gradient_path_take_the_fallback(monkeypatch):
    torch.manual_seed(9)
    model = NotPerExample()
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    seen = _spy_fallback(monkeypatch)
    got = model_m_coherence(model, x, y, chunk_size=5)  # the chunk is as long as the 1-D buffer
    assert seen[-1] == ["frozen.bias", "frozen.weight", "mat.bias", "mat.weight", "vec.bias", "vec.weight"]
    want = brute_force(copy.deepcopy(model), x, y)
    assert math.isnan(want["frozen"]) and math.isnan(got["frozen"])
    assert got == pytest.approx(want, rel=1e-4, nan_ok=True)


def test_rows_per_chunk_bounds_the_largest_activation_of_a_chunk(monkeypatch):
    """A chunk's rows: chunk_size, or ACTIVATION_BYTES over one example's largest module output."""
    import cglib.coherence as coh
    from cglib.models import cnn
    x = torch.randn(5, 1, 28, 28)
    conv = cnn((1, 28, 28), [16, 32], 10).eval()  # largest output: 16 × 28 × 28 float32 = 50,176 B
    assert coh.rows_per_chunk(conv, x, 1024) == 16 * 2**20 // 50_176 == 334
    assert coh.rows_per_chunk(conv, x, 300) == 300  # within the budget: chunk_size as asked
    assert coh.rows_per_chunk(conv, x[:1], 1024) == 334  # a sample of one example probes with it
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
    assert coh.rows_per_chunk(mlp, x, 1024) == 1024
    assert coh.rows_per_chunk(copy.deepcopy(mlp).double(), x.double(), 10**6) == 16 * 2**20 // (784 * 8)  # float64
    monkeypatch.setattr(coh, "ACTIVATION_BYTES", 1000)
    assert coh.rows_per_chunk(conv, x, 1024) == 1  # an example beyond the budget: one per chunk
    with pytest.raises(ValueError, match="chunk_size must be ≥ 1, got 0"):
        coh.rows_per_chunk(mlp, x, 0)


def test_the_activation_bound_changes_no_measurement_and_no_statistic(monkeypatch):
    """Chunks cut by the activation bound give the same norms and m-coherence; the probe forward
    moves no BatchNorm statistic (it runs in eval mode) and leaves the modes as they were."""
    import cglib.coherence as coh
    from cglib.models import cnn
    torch.manual_seed(3)
    model = cnn((1, 12, 12), [4, 8], 4)
    x, y = torch.randn(9, 1, 12, 12), torch.randint(0, 4, (9,))
    model.train()
    model(torch.randn(20, 1, 12, 12) + 2.0)  # running statistics away from their initial values
    state = copy.deepcopy(model.state_dict())
    whole = coh.per_example_sq_norms(model, x, y), coh.model_m_coherence(model, x, y)
    rows = []
    real = coh._chunks
    monkeypatch.setattr(coh, "_chunks", lambda m, size: rows.append(size) or real(m, size))
    monkeypatch.setattr(coh, "ACTIVATION_BYTES", 4 * 12 * 12 * 4 * 2)  # two examples of the first conv
    cut = coh.per_example_sq_norms(model, x, y), coh.model_m_coherence(model, x, y)
    assert rows == [2, 2]
    torch.testing.assert_close(cut[0], whole[0], rtol=1e-6, atol=0)
    assert cut[1] == pytest.approx(whole[1], rel=1e-6)
    assert model.training and all(mod.training for mod in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_rows_per_chunk_probes_a_model_once_per_input_shape_and_dtype():
    """The probe forward runs once per model, input shape and dtype; another shape or dtype (a
    model made float64) is probed afresh, so its chunks follow its own activation sizes."""
    import cglib.coherence as coh
    from cglib.models import cnn
    conv = cnn((1, 28, 28), [16, 32], 10).eval()
    calls = []
    conv.register_forward_pre_hook(lambda mod, inputs: calls.append(tuple(inputs[0].shape)))
    x = torch.randn(5, 1, 28, 28)
    assert [coh.rows_per_chunk(conv, x, 1024) for _ in range(3)] == [334] * 3 and calls == [(2, 1, 28, 28)]
    assert coh.rows_per_chunk(conv, torch.randn(4, 1, 14, 14), 2000) == 16 * 2**20 // 12_544 == 1337  # 16×14×14×4 B
    assert coh.rows_per_chunk(conv.double(), x.double(), 1024) == 334 // 2  # 8-byte activations
    assert len(calls) == 3
