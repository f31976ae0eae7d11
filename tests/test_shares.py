"""cglib.shares on tiny hand-made cases: argument checks, the masks that need no pass, which
group a masked backward pass goes over, the tracker's defaults, note, cumulative state and its
behaviour at (and near) a stationary point. The per-example definition itself is checked in
tests/test_coherence.py; every test here runs well under a second."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cglib.shares import LossShareTracker, loss_shares, null_designations


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _shares_by_hand(model, x, y, mask):
    """⟨g, g⟩ and ⟨g, g^p⟩ in float64 from two autograd passes (summed loss of all, of the group)."""
    params = [p for p in model.parameters() if p.requires_grad]

    def summed(xs, ys):
        loss = F.cross_entropy(model(xs), ys, reduction="sum")
        return [torch.zeros_like(p, dtype=torch.float64) if g is None else g.double()
                for p, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True))]
    model.eval()
    g, gp = summed(x, y), summed(x[mask], y[mask])
    return sum((a * a).sum() for a in g).item(), sum((a * b).sum() for a, b in zip(g, gp)).item()


class WithUnused(nn.Module):
    """A trainable parameter the loss never reaches: its gradient is None, not an error."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.lin = nn.Linear(3, 2)
        self.unused = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return self.lin(x)


def test_loss_shares_checks_method_and_lengths():
    model, x, y = nn.Linear(3, 2), torch.randn(6, 3), torch.zeros(6, dtype=torch.long)
    ok = torch.arange(6) < 2
    with pytest.raises(ValueError, match="method must be one of"):
        loss_shares(model, x, y, [ok], method="forward")
    with pytest.raises(ValueError, match="same length"):
        loss_shares(model, x, y[:5], [ok])
    with pytest.raises(ValueError, match="same length"):
        loss_shares(model, x, y, [ok, ok[:5]])
    assert loss_shares(model, x, y, [ok], method="backward")["method"] == "backward"


@pytest.mark.parametrize("method", ["auto", "jvp", "backward"])
def test_all_and_no_pristine_masks_need_no_pass_and_unused_parameters_count_zero(method):
    model = WithUnused()
    g = _gen(2)
    x, y = torch.randn(8, 3, generator=g), torch.randint(0, 2, (8,), generator=g)
    everyone, nobody = torch.ones(8, dtype=torch.bool), torch.zeros(8, dtype=torch.bool)
    got = loss_shares(model, x, y, [everyone, nobody], method=method)
    gg, _ = _shares_by_hand(model, x, y, everyone)
    assert got == {"gg": pytest.approx(gg, rel=1e-6), "g_gp": [got["gg"], 0.0], "method": "none"}
    some = torch.tensor([1, 0, 0, 1, 1, 0, 0, 0], dtype=torch.bool)
    got = loss_shares(model, x, y, [everyone, some, nobody], method=method)
    assert got["method"] == ("backward" if method == "backward" else "jvp")
    assert got["g_gp"][0] == got["gg"] and got["g_gp"][2] == 0.0
    assert got["g_gp"][1] == pytest.approx(_shares_by_hand(model, x, y, some)[1], rel=1e-5)


def test_a_masked_backward_pass_goes_over_the_smaller_group():
    """4 pristine of 10: a pass over those 4; 5 of 10 (a tie): over the pristine 5; 6 of 10: over
    the 4 others, ⟨g, g^p⟩ = ⟨g, g⟩ − ⟨g, g^c⟩. Every value against the per-group definition."""
    torch.manual_seed(3)
    model = nn.Linear(3, 2)
    x = torch.randn(10, 3, generator=_gen(3))
    x[:, 0] = torch.arange(10.0)  # each row names its example
    y = torch.randint(0, 2, (10,), generator=_gen(4))
    masks = [torch.arange(10) % 5 < 2, torch.arange(10) % 2 == 0, torch.arange(10) % 5 >= 2]
    seen = []
    handle = model.register_forward_hook(lambda mod, inp, out: seen.append(inp[0][:, 0].long().tolist()))
    try:
        got = loss_shares(model, x, y, masks, chunk_size=100, method="backward")
    finally:
        handle.remove()
    assert seen == [list(range(10)), [0, 1, 5, 6], [0, 2, 4, 6, 8], [0, 1, 5, 6]]
    for mask, g_gp in zip(masks, got["g_gp"]):
        gg, ref = _shares_by_hand(model, x, y, mask)
        assert got["gg"] == pytest.approx(gg, rel=1e-6)
        assert g_gp == pytest.approx(ref, rel=1e-5, abs=1e-7 * gg)


def _bn_model():
    torch.manual_seed(5)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2))


def test_defaults_prime_batchnorm_and_draw_three_nulls_with_seed_zero():
    model = _bn_model()
    g = _gen(6)
    x, y = torch.randn(12, 3, generator=g) + 3.0, torch.randint(0, 2, (12,), generator=g)
    pristine = torch.arange(12) % 3 > 0
    primed = loss_shares(model, x, y, [pristine], prime_bn=True)
    assert loss_shares(model, x, y, [pristine]) == primed
    assert loss_shares(model, x, y, [pristine], prime_bn=False)["gg"] != pytest.approx(primed["gg"], rel=1e-3)
    tracker = LossShareTracker(pristine)
    assert tracker.k_nulls == 3 and len(tracker.nulls) == 3
    assert all(torch.equal(a, b) for a, b in zip(tracker.nulls, null_designations(pristine, 3, seed=0)))
    row = tracker.update(model, x, y)[0]
    assert row["f_pristine"] == pytest.approx(primed["g_gp"][0] / primed["gg"], rel=1e-12)


@pytest.mark.parametrize("pristine, note", [
    (torch.ones(5, dtype=torch.bool), "no corrupt examples: f is fixed (f_corrupt = 0), i_corrupt is undefined "
                                      "and omitted, and null worlds are skipped (every permutation is the same)"),
    (torch.zeros(5, dtype=torch.bool), "no pristine examples: f is fixed (f_pristine = 0), i_pristine is undefined "
                                       "and omitted, and null worlds are skipped (every permutation is the same)"),
])
def test_the_note_names_the_empty_group(pristine, note):
    tracker = LossShareTracker(pristine, k_nulls=2)
    assert tracker.note == note and tracker.nulls == []
    assert (tracker.n_pristine, tracker.n_corrupt) == (int(pristine.sum()), 5 - int(pristine.sum()))
    assert tracker.state_dict()["cum"].shape == (1, 2)
    mixed = LossShareTracker(torch.tensor([1, 0, 0, 0, 1], dtype=torch.bool), k_nulls=2)
    assert mixed.note is None and (mixed.n_pristine, mixed.n_corrupt) == (2, 3)
    assert mixed.state_dict()["cum"].shape == (3, 2) and mixed.steps == 0


def test_cumulative_state_is_the_weighted_sum_of_each_designations_shares():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    g = _gen(7)
    x, y = torch.randn(10, 3, generator=g), torch.randint(0, 2, (10,), generator=g)
    pristine = torch.arange(10) < 7
    tracker = LossShareTracker(pristine, k_nulls=2, seed=1, chunk_size=4)
    with pytest.raises(ValueError, match="whole training set"):
        tracker.update(model, x[:9], y[:9])
    masks = [pristine, *tracker.nulls]
    shares = loss_shares(model, x, y, masks, chunk_size=4, prime_bn=False)
    want = torch.tensor([[g_gp, shares["gg"] - g_gp] for g_gp in shares["g_gp"]], dtype=torch.float64)
    tracker.update(model, x, y, weight=3)
    rows = tracker.update(model, x, y)  # default weight 1: 4 steps in all
    state = tracker.state_dict()
    assert state["steps"] == 2 and state["k_nulls"] == 2 and state["seed"] == 1
    torch.testing.assert_close(state["cum"], 4 * want, rtol=1e-12, atol=0)
    for k, row in enumerate(rows):
        assert row == {"null": k - 1, "f_pristine": pytest.approx(want[k, 0].item() / shares["gg"], rel=1e-12),
                       "f_corrupt": pytest.approx(want[k, 1].item() / shares["gg"], rel=1e-9),
                       "i_pristine": pytest.approx(4 * want[k, 0].item() / 7, rel=1e-12),
                       "i_corrupt": pytest.approx(4 * want[k, 1].item() / 3, rel=1e-12)}


def test_at_a_stationary_point_f_is_omitted_and_near_one_it_is_kept():
    """Zero inputs and weights, balanced labels: every logit is 0, p = (½, ½), and the summed
    gradient Σ (p − e_y) xᵀ, Σ (p − e_y) is exactly zero: ⟨g, g⟩ = 0, no reduction to share."""
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    x, y = torch.zeros(6, 2), torch.tensor([0, 1, 0, 1, 0, 1])
    pristine = torch.tensor([1, 1, 0, 1, 1, 0], dtype=torch.bool)
    tracker = LossShareTracker(pristine, k_nulls=1)
    rows = tracker.update(model, x, y)
    assert rows == [{"null": -1, "i_pristine": 0.0, "i_corrupt": 0.0}, {"null": 0, "i_pristine": 0.0, "i_corrupt": 0.0}]
    # a tiny gradient (⟨g, g⟩ ≪ 1) is still one to share
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    x = torch.full((6, 2), 1e-3)
    y = torch.tensor([0, 0, 0, 0, 1, 1])
    gg, gp = _shares_by_hand(model, x, y, pristine)
    assert 0 < gg < 1
    row = LossShareTracker(pristine, k_nulls=1).update(model, x, y)[0]
    assert row["f_pristine"] == pytest.approx(gp / gg, rel=1e-5)


def test_state_from_another_k_nulls_or_seed_is_refused():
    pristine = torch.arange(8) % 2 == 0
    state = LossShareTracker(pristine, k_nulls=2, seed=3).state_dict()
    LossShareTracker(pristine, k_nulls=2, seed=3).load_state_dict(state)
    for other in (LossShareTracker(pristine, k_nulls=1, seed=3), LossShareTracker(pristine, k_nulls=2, seed=4)):
        with pytest.raises(ValueError, match="different designation"):
            other.load_state_dict(state)


def test_with_one_group_empty_f_is_fixed_even_at_a_stationary_point_and_one_example_is_a_group():
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    x, y = torch.zeros(4, 2), torch.tensor([0, 1, 0, 1])  # ⟨g, g⟩ = 0 exactly (see above)
    everyone, nobody = torch.ones(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool)
    assert LossShareTracker(everyone).update(model, x, y) == [
        {"null": -1, "f_pristine": 1.0, "f_corrupt": 0.0, "i_pristine": 0.0}]
    assert LossShareTracker(nobody).update(model, x, y) == [
        {"null": -1, "f_pristine": 0.0, "f_corrupt": 1.0, "i_corrupt": 0.0}]
    torch.manual_seed(8)
    model = nn.Linear(2, 2)
    x = torch.randn(4, 2, generator=_gen(8))
    for pristine in (torch.tensor([0, 0, 1, 0], dtype=torch.bool), torch.tensor([1, 1, 0, 1], dtype=torch.bool)):
        gg, gp = _shares_by_hand(model, x, y, pristine)
        row = LossShareTracker(pristine, k_nulls=1).update(model, x, y)[0]
        assert row["f_pristine"] == pytest.approx(gp / gg, rel=1e-5)
        assert 0.02 < abs(row["f_pristine"]) and abs(row["f_pristine"] - 1) > 0.02  # not a fixed 0 or 1
