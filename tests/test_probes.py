"""cglib.probes: which steps each probe measures, the rows it writes (every key and value, against
the measurement functions it wraps, called by hand), what it records from the training forward
pass, and which probes a study's params ask for. Tiny models: each test well under a second."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from cglib.coherence import model_coherence_stats
from cglib.data import fixed_sample
from cglib.probes import CoherenceProbe, ScoreProbe, ShareProbe, make_probes
from cglib.shares import LossShareTracker, loss_shares


def _gen(seed):
    return torch.Generator().manual_seed(seed)


class RootNet(nn.Module):
    """A Linear, a BatchNorm with stale statistics (inputs are shifted, so priming them changes
    every value) and a parameter of the root module itself (layer "" → "root")."""

    def __init__(self, d=4, k=3):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(d, k)
        self.bn = nn.BatchNorm1d(k)
        self.shift = nn.Parameter(torch.tensor([0.3, -0.2, 0.1]))

    def forward(self, x):
        return self.bn(self.lin(x)) + self.shift


# ------------------------------------------------------------------ CoherenceProbe

def _coherence_rows(model, x, y, split, chunk, label_part):
    rows = []
    for layer, s in model_coherence_stats(model, x, y, chunk_size=chunk).items():
        rows += [dict(split=split, layer=layer or "root", metric="m_coherence", value=s.m_coherence, experiment="E7"),
                 dict(split=split, layer=layer or "root", metric="alpha", value=s.alpha, experiment="E7")]
    if label_part:
        for layer, s in model_coherence_stats(model, x, y, chunk_size=chunk, loss="label_part").items():
            rows.append(dict(split=split, layer=layer or "root", metric="m_coherence_label", value=s.m_coherence,
                             experiment="E7"))
    return rows


def test_coherence_probe_rows_on_each_split_sample_with_the_label_part():
    g = _gen(1)
    x_tr, y_tr = torch.randn(10, 4, generator=g) + 2, torch.randint(0, 3, (10,), generator=g)
    x_te, y_te = torch.randn(8, 4, generator=g) + 2, torch.randint(0, 3, (8,), generator=g)
    cfg = {"seed": 5, "train_sample": 6, "test_sample": 4, "chunk_size": 3, "label_part": True}
    # the test sample is drawn with seed + 1, and that is a different sample from seeds 5 and 7
    idx_te = fixed_sample(8, 4, 6)
    assert not torch.equal(idx_te, fixed_sample(8, 4, 5)) and not torch.equal(idx_te, fixed_sample(8, 4, 7))
    model = RootNet()
    probe = CoherenceProbe(cfg, x_tr, y_tr, x_te, y_te)  # prime_bn False: the stale statistics
    assert probe.rows(3, model, scheduled=False) == []
    got = probe.rows(3, model, scheduled=True)
    idx_tr = fixed_sample(10, 6, 5)
    want = (_coherence_rows(model, x_tr[idx_tr], y_tr[idx_tr], "train", 3, True)
            + _coherence_rows(model, x_te[idx_te], y_te[idx_te], "test", 3, True))
    assert [r["layer"] for r in got[:8]] == ["all", "all", "root", "root", "lin", "lin", "bn", "bn"]
    assert got == want
    assert len(got) == 2 * (4 * 2 + 4)
    primed = CoherenceProbe(cfg, x_tr, y_tr, x_te, y_te, prime_bn=True).rows(3, model, scheduled=True)
    assert primed[0]["value"] != pytest.approx(got[0]["value"], rel=1e-3)  # priming is a real change


def test_coherence_probe_skips_an_unsampled_split_and_the_label_part_when_off():
    g = _gen(2)
    x, y = torch.randn(10, 4, generator=g), torch.randint(0, 3, (10,), generator=g)
    model = nn.Linear(4, 3)
    for train, test in [(5, 0), (0, 5)]:
        cfg = {"seed": 0, "train_sample": train, "test_sample": test, "chunk_size": 4, "label_part": False}
        probe = CoherenceProbe(cfg, x, y, x, y)
        split, seed = ("train", 0) if train else ("test", 1)
        idx = fixed_sample(10, 5, seed)
        assert list(probe.samples) == [split]
        assert probe.rows(0, model, scheduled=True) == _coherence_rows(model, x[idx], y[idx], split, 4, False)


# ------------------------------------------------------------------ ShareProbe

def _share_cfg(**kw):
    return {"steps": 3, "then_eval": True, "nulls": 2, "seed": 4, "chunk_size": 16, **kw}


def test_share_probe_measured_steps_and_the_steps_each_stands_for():
    x, y, corrupt = torch.zeros(8, 2), torch.zeros(8, dtype=torch.long), torch.arange(8) % 2 == 0
    # steps 0, 1, 2, then the evaluation steps from 3 on (3 itself included, 0 and 2 not again)
    probe = ShareProbe(_share_cfg(), x, y, corrupt, schedule=[0, 2, 3, 6, 9])
    assert probe.weight == {0: 1, 1: 1, 2: 1, 3: 3, 6: 3, 9: 1}
    assert ShareProbe(_share_cfg(then_eval=False), x, y, corrupt, schedule=[0, 2, 3, 6, 9]).weight == \
        {0: 1, 1: 1, 2: 1}
    assert ShareProbe(_share_cfg(steps=1), x, y, corrupt, schedule=[0, 5]).weight == {0: 5, 5: 1}
    assert ShareProbe(_share_cfg(steps=0), x, y, corrupt, schedule=[0, 2, 3]).weight == {}


def test_share_probe_rows_are_the_trackers_on_the_pristine_designation_with_weights():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3))
    g = _gen(3)
    x, y = torch.randn(12, 5, generator=g) + 1.5, torch.randint(0, 3, (12,), generator=g)
    corrupt = torch.tensor([1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0], dtype=torch.bool)
    logged = []
    probe = ShareProbe(_share_cfg(nulls=1), x, y, corrupt, log=logged.append, schedule=[0, 3, 5])
    assert logged == []  # both groups present: nothing to say
    # by hand: the real designation is the pristine one, and shares at prime_bn=False
    ref = LossShareTracker(~corrupt, k_nulls=1, seed=4, chunk_size=16, prime_bn=False)
    assert torch.equal(probe.tracker.pristine, ~corrupt)
    for step, weight in [(0, 1), (1, 1), (2, 1), (3, 2), (4, None), (5, 1)]:
        got = probe.rows(step, model, scheduled=False)
        if weight is None:
            assert got == []
            continue
        want = [dict(split="train", metric=k, null=r["null"], value=v, experiment="E2")
                for r in ref.update(model, x, y, weight=weight) for k, v in r.items() if k != "null"]
        assert got == want
    assert [(r["metric"], r["null"]) for r in got[:4]] == [("f_pristine", -1), ("f_corrupt", -1),
                                                          ("i_pristine", -1), ("i_corrupt", -1)]
    # the real designation's f^p at these weights is ⟨g, g^p⟩/⟨g, g⟩ of the pristine group
    shares = loss_shares(model, x, y, [~corrupt], chunk_size=16, prime_bn=False)
    assert got[0]["value"] == pytest.approx(shares["g_gp"][0] / shares["gg"], rel=1e-9)
    assert got[0]["value"] != pytest.approx(1 - got[0]["value"], rel=1e-3)  # pristine ≠ corrupt


def test_share_probe_logs_the_trackers_note_when_a_group_is_empty():
    x, y = torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)
    logged = []
    probe = ShareProbe(_share_cfg(), x, y, torch.zeros(4, dtype=torch.bool), log=logged.append)
    assert logged == [f"loss-reduction shares: {probe.tracker.note}"] and "no corrupt" in logged[0]


def test_share_probe_dense_then_sparse_schedule_weights_i_by_the_steps_each_stands_for():
    """Every step of the first 5, then the evaluation steps to 100: each sparse measurement
    stands for the steps until the next one, so on a model that does not move (every step's
    shares equal) i^p, i^c are 101 × one step's ⟨g, g^p⟩ / |p| and ⟨g, g^c⟩ / |c|."""
    from cglib.train import eval_steps
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    g = _gen(1)
    x, y = torch.randn(40, 6, generator=g), torch.randint(0, 3, (40,), generator=g)
    corrupt = torch.arange(40) % 4 == 0
    probe = ShareProbe(_share_cfg(steps=5, nulls=2, seed=0), x, y, corrupt, schedule=eval_steps(100, 9))
    measured, last = [], None
    for step in range(101):
        rows = probe.rows(step, model, scheduled=False)
        if rows:
            measured.append(step)
            last = rows
    assert measured == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, *range(10, 100, 10), 100]
    assert sum(probe.weight.values()) == 101
    masks = [~corrupt, *probe.tracker.nulls]
    shares = loss_shares(model, x, y, masks, chunk_size=16, prime_bn=False)
    gg = shares["gg"]
    val = {(r["metric"], r["null"]): r["value"] for r in last}
    for k, g_gp in enumerate(shares["g_gp"]):
        assert val["f_pristine", k - 1] == pytest.approx(g_gp / gg, rel=1e-9)
        assert val["i_pristine", k - 1] == pytest.approx(101 * g_gp / 30, rel=1e-9)
        assert val["i_corrupt", k - 1] == pytest.approx(101 * (gg - g_gp) / 10, rel=1e-9)


# ------------------------------------------------------------------ ScoreProbe

def _grand_by_hand(model, x, y):
    model.eval()
    params = {k: p.detach() for k, p in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss(ps, xi, yi):
        return F.cross_entropy(functional_call(model, (ps, buffers), (xi[None],)), yi[None])

    per = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    return torch.cat([v.reshape(len(x), -1) for v in per.values()], 1).double().square().sum(1).sqrt()


def test_score_probe_records_presented_outputs_and_the_tail_once_per_epoch():
    torch.manual_seed(1)
    # BatchNorm: train-mode outputs differ from eval-mode ones, and inputs must be (N, C)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    g = _gen(5)
    x, y = torch.randn(10, 3, generator=g), torch.randint(0, 4, (10,), generator=g)
    probe = ScoreProbe(x, y, batch_size=4, el2n_epoch=1, num_classes=4, chunk_size=3)
    assert probe.per_epoch == 2  # 10 // 4: the tail of 2 is dropped by the training loop
    assert probe.rows(0, model, scheduled=True) == []
    torch.testing.assert_close(probe.scores.grand, _grand_by_hand(model, x, y), rtol=1e-5, atol=1e-7)
    model.train()
    want = torch.zeros(10, 4)
    with torch.no_grad():
        idx = torch.tensor([7, 1, 4, 0])
        with probe.capture(model, idx):
            out = model(x[idx] + 1.0)  # an augmented batch: its output is the record
        want[idx] = out
        idx = torch.tensor([2, 9, 5, 3])
        with probe.capture(model, idx):  # called in two halves, as M3 calls it in thirds
            halves = [model(x[idx[:2]] * 2), model(x[idx[2:]] * 2)]
        want[idx] = torch.cat(halves)
    assert probe.presented.tolist() == [True, True, True, True, True, True, False, True, False, True]
    assert probe.rows(1, model, scheduled=True) == [] and probe.scores.epochs == 0
    assert probe.rows(2, model, scheduled=True) == []
    assert model.training
    model.eval()
    with torch.no_grad():
        want[[6, 8]] = model(x[[6, 8]])  # the tail, evaluated at the epoch's end
    model.train()
    p = want.double().softmax(1)
    torch.testing.assert_close(probe.scores.sum_p, p[torch.arange(10), y], rtol=1e-6, atol=1e-9)
    el2n = (p - F.one_hot(y, 4).double()).norm(dim=1)
    torch.testing.assert_close(probe.scores.el2n, el2n, rtol=1e-6, atol=1e-9)
    state = probe.scores.state_dict()
    assert state["epochs"] == 1 and type(state["epochs"]) is int
    assert not probe.presented.any()  # a new epoch begins with nothing presented


def test_score_probe_falls_back_to_eval_outputs_when_no_call_fits_the_batch():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).train()
    x = torch.randn(8, 3, generator=_gen(6))
    probe = ScoreProbe(x, torch.zeros(8, dtype=torch.long), batch_size=4, el2n_epoch=1, num_classes=4)
    model.eval()
    with torch.no_grad():
        eval_out = model(x[:4])
    model.train()
    with torch.no_grad():
        with probe.capture(model, torch.arange(4)):
            pass  # no call at all
        assert torch.equal(probe.outputs[:4], eval_out)
        probe.outputs.zero_()
        with probe.capture(model, torch.arange(4)):
            model(torch.cat([x[:4], x[:4] + 1]))  # one call on a batch of another size
        model.eval()
        eval_out = model(x[:4])  # on the statistics that train-mode call updated
        model.train()
        assert torch.equal(probe.outputs[:4], eval_out)
    assert probe.presented[:4].all() and not probe.presented[4:].any()


# ------------------------------------------------------------------ make_probes

def _params(**over):
    train = {"coherence": {"train_sample": 4, "test_sample": 0, "chunk_size": 7, "seed": 0, "label_part": False},
             "bn_priming": "mc", "batch_size": 3,
             "shares": {"steps": 2, "optimizers": ["sgd"], "then_eval": False, "nulls": 1, "seed": 0,
                        "chunk_size": 16}}
    for k, v in over.items():
        if k in ("train_sample", "test_sample"):
            train["coherence"][k] = v
        elif k == "steps":
            train["shares"][k] = v
        else:
            train[k] = v
    return {"train": train, "difficulty": {"el2n_epoch": 2}}


def _data():
    g = _gen(7)
    return {"x_train": torch.randn(10, 3, generator=g), "x_test": torch.randn(6, 3, generator=g),
            "y_test": torch.randint(0, 5, (6,), generator=g), "num_classes": 5}


def test_make_probes_asks_for_what_the_params_say():
    data, labels = _data(), torch.randint(0, 5, (10,), generator=_gen(8))
    corrupt = torch.arange(10) < 3
    probes = make_probes(_params(), "sgd", data, labels, corrupt, schedule=[0, 4], noise=0.5)
    assert list(probes) == ["coherence", "shares", "scores"]
    assert probes["coherence"].prime_bn is False and probes["shares"].tracker.prime_bn is False
    assert list(probes["coherence"].samples) == ["train"]
    assert probes["shares"].weight == {0: 1, 1: 1}
    assert torch.equal(probes["shares"].tracker.pristine, ~corrupt)
    scores = probes["scores"]
    assert scores.per_epoch == 3 and scores.chunk == 7 and scores.scores.el2n_epoch == 2
    assert scores.outputs.shape == (10, 5)
    primed = make_probes(_params(bn_priming="per_measurement"), "sgd", data, labels, corrupt, noise=0.5)
    assert primed["coherence"].prime_bn is True and primed["shares"].tracker.prime_bn is True
    logged = []
    make_probes(_params(), "sgd", data, labels, torch.zeros(10, dtype=torch.bool), logged.append)
    assert len(logged) == 1 and "no corrupt" in logged[0]


@pytest.mark.parametrize("over, optimizer, has_corrupt, noise, want", [
    ({}, "sgd", True, None, ["coherence", "shares", "scores"]),
    ({}, "sgd", True, 0.0, ["coherence", "scores"]),      # ε = 0: no corrupt group
    ({}, "sgd", True, 1e-6, ["coherence", "shares", "scores"]),
    ({}, "sgd", True, 0.999, ["coherence", "shares", "scores"]),
    ({}, "sgd", True, 1.0, ["coherence", "scores"]),      # ε = 1: every label permuted
    ({}, "sgd", True, 1.5, ["coherence", "scores"]),
    ({}, "sgd", True, -0.5, ["coherence", "scores"]),
    ({}, "adam", True, 0.5, ["coherence", "scores"]),     # not a shares optimizer
    ({}, "sgd", False, 0.5, ["coherence", "scores"]),     # clean-label run
    ({"steps": 0}, "sgd", True, 0.5, ["coherence", "scores"]),
    ({"train_sample": 0, "test_sample": 3}, "sgd", True, 0.5, ["coherence", "shares", "scores"]),
    ({"train_sample": 0}, "sgd", True, 0.5, ["shares", "scores"]),
])
def test_make_probes_which_probes(over, optimizer, has_corrupt, noise, want):
    corrupt = torch.arange(10) < 3 if has_corrupt else None
    probes = make_probes(_params(**over), optimizer, _data(), torch.zeros(10, dtype=torch.long), corrupt,
                         noise=noise)
    assert list(probes) == want


def test_probe_state_round_trips_through_a_checkpoint():
    torch.manual_seed(3)
    model = nn.Linear(3, 4)
    g = _gen(9)
    x, y = torch.randn(8, 3, generator=g), torch.randint(0, 4, (8,), generator=g)
    probe = ScoreProbe(x, y, batch_size=4, el2n_epoch=1, num_classes=4)
    probe.rows(0, model, scheduled=True)
    with torch.no_grad(), probe.capture(model, torch.tensor([0, 1, 2, 3])):
        model(x[:4] * 3)
    probe.rows(2, model, scheduled=True)  # epoch 1 recorded (with the tail 4..7)
    with torch.no_grad(), probe.capture(model, torch.tensor([5, 6, 7, 4])):
        model(x[[5, 6, 7, 4]] - 1)
    state = probe.state_dict()
    assert set(state) == {"scores", "outputs", "presented"}
    assert torch.equal(state["outputs"], probe.outputs) and state["outputs"] is not probe.outputs
    assert state["presented"].tolist() == [False] * 4 + [True] * 4
    fresh = ScoreProbe(x, y, batch_size=4, el2n_epoch=1, num_classes=4)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.outputs, probe.outputs) and torch.equal(fresh.presented, probe.presented)
    for k, v in probe.scores.state_dict().items():
        got = fresh.scores.state_dict()[k]
        assert torch.equal(got, v) if isinstance(v, torch.Tensor) else got == v, k
    probe.outputs.zero_()
    assert not torch.equal(state["outputs"], probe.outputs)  # the state was a copy

    corrupt = torch.arange(8) % 4 == 0
    shares = ShareProbe(_share_cfg(nulls=1), x, y, corrupt)
    shares.rows(0, model, scheduled=False)
    resumed = ShareProbe(_share_cfg(nulls=1), x, y, corrupt)
    resumed.load_state_dict(shares.state_dict())
    assert resumed.rows(1, model, scheduled=False) == shares.rows(1, model, scheduled=False)
    coh = CoherenceProbe({"seed": 0, "train_sample": 0, "test_sample": 0, "chunk_size": 4, "label_part": False},
                         x, y, x, y)
    assert coh.state_dict() == {} and coh.load_state_dict({}) is None
