"""cglib.scores (E8): the running aggregates against a slow twin that keeps the whole per-epoch
record of a real (tiny) training run, hand-made records with known counts, checkpoint round trips,
GraNd against torch.func per-example gradients, and the rank statistics on known tables."""
from __future__ import annotations

import copy
import io
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from cglib.coherence import model_coherence_stats, per_example_sq_norms
from cglib.measuring import prime_batchnorm
from cglib.data import make_synthetic
from cglib.models import mlp
from cglib.scores import (HARDNESS_SIGN, SCORES, ExampleScores, auroc_corrupt, grand,
                          spearman_with)

EPOCHS, EL2N_EPOCH = 8, 3  # EL2N neither at the first nor the last record: off-by-ones show


# =============================================================== a real run and its slow twin

def _train_record(seed=0, n=120, classes=4):
    """Minibatch SGD with a high lr on overlapping Gaussian clusters, so examples flip; returns
    the full eval-mode logits record (EPOCHS, n, K) and the labels."""
    d = make_synthetic(seed=seed, dim=6, classes=classes, separation=1.5, n_train_total=n, n_test_total=1)
    x, y = torch.from_numpy(d["x_train"]), torch.from_numpy(d["y_train"])
    torch.manual_seed(seed)
    model = mlp((6,), [16], classes)
    opt = torch.optim.SGD(model.parameters(), lr=1.5)
    gen = torch.Generator().manual_seed(seed)
    record = []
    for _ in range(EPOCHS):
        model.train()
        for idx in torch.randperm(n, generator=gen).split(20):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            record.append(model(x))
    return torch.stack(record), y


def _slow_twin(record: torch.Tensor, y: torch.Tensor, el2n_epoch: int) -> pd.DataFrame:
    """Every score straight from its definition, one example at a time, in numpy float64."""
    z, y = record.double().numpy(), y.numpy()
    n_epochs, n, k = z.shape
    rows = []
    for i in range(n):
        zi = z[:, i]  # (E, K)
        correct = [int(np.argmax(zi[t])) == y[i] for t in range(n_epochs)]
        probs = np.exp(zi - zi.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        p = probs[:, y[i]]
        others = np.delete(zi, y[i], axis=1)
        forgets = sum(1 for t in range(1, n_epochs) if correct[t - 1] and not correct[t])
        onehot = np.eye(k)[y[i]]
        rows.append({
            "forgetting_events": forgets if any(correct) else math.inf,
            "first_learned_epoch": next((t + 1 for t in range(n_epochs) if correct[t]), math.inf),
            "cumulative_accuracy": np.mean(correct),
            "confidence": np.mean(p),
            "variability": np.std(p),
            "aum": np.mean(zi[:, y[i]] - others.max(1)),
            "el2n": np.linalg.norm(probs[el2n_epoch - 1] - onehot) if el2n_epoch <= n_epochs else math.nan,
            "grand": math.nan,
        })
    return pd.DataFrame(rows, columns=list(SCORES)).astype(np.float64)


@pytest.fixture(scope="module")
def run():
    return _train_record()


def _fed(record, y, el2n_epoch=EL2N_EPOCH, upto=None):
    s = ExampleScores(len(y), el2n_epoch)
    for t in range(upto or len(record)):
        s.update(t + 1, record[t], y)
    return s


def test_the_run_is_a_test_with_teeth(run):
    """The comparisons below only catch slips if the record has flips of every kind."""
    record, y = run
    correct = (record.argmax(2) == y).numpy()  # (E, n)
    forgets = (correct[:-1] & ~correct[1:]).sum(0)
    learns = (~correct[:-1] & correct[1:]).sum(0)
    assert forgets.sum() > 10 and (forgets != learns).sum() > 10  # direction of the transition
    assert (~correct.any(0)).sum() >= 2  # never learned → inf
    assert ((correct.argmax(0) > 0) & correct.any(0)).sum() > 10  # learned after epoch 1
    assert (correct[EL2N_EPOCH - 1] != correct[EL2N_EPOCH]).any()  # el2n epoch matters


def test_scores_equal_the_slow_twin(run):
    record, y = run
    got = _fed(record, y).frame()
    want = _slow_twin(record, y, EL2N_EPOCH)
    assert list(got.columns) == list(SCORES) and len(got) == len(y)
    assert (got.dtypes == np.float64).all()
    for col in ("forgetting_events", "first_learned_epoch", "grand"):  # counts, inf and NaN exactly
        np.testing.assert_array_equal(got[col], want[col], err_msg=col)
    for col in ("cumulative_accuracy", "confidence", "aum", "el2n"):
        np.testing.assert_allclose(got[col], want[col], rtol=1e-9, atol=1e-12, err_msg=col)
    # E[p²] − E[p]² in float64: absolute error ~√(1e-16) where p hardly moves, exact otherwise
    np.testing.assert_allclose(got["variability"], want["variability"], rtol=1e-9, atol=1e-7)
    assert (want["variability"] > 0.05).sum() > 10  # ddof=1 would be off by √(8/7) on these


def test_state_keeps_no_per_epoch_history(run):
    record, y = run
    state = _fed(record, y).state_dict()
    for k, v in state.items():
        assert isinstance(v, (int, float)) or (torch.is_tensor(v) and v.numel() <= len(y)), k


def test_hand_made_record_with_known_counts():
    # K = 3, label 0 for all; correct at an epoch iff logit 0 is the largest
    pattern = ["CICI",  # forgotten twice, first learned at 1
               "IIII",  # never learned: forgetting inf, first learned inf
               "IICC",  # learned at 3, never forgotten
               "CCCC",
               "ICIC"]  # forgotten once (learned twice: counting I→C would give 2)
    logits = torch.tensor([[[2.0, 0.0, 1.0] if p[t] == "C" else [0.0, 2.0, 1.0] for p in pattern]
                           for t in range(4)])
    y = torch.zeros(5, dtype=torch.long)
    s = ExampleScores(5, el2n_epoch=2)
    for t in range(4):
        s.update(t + 1, logits[t], y)
    f = s.frame()
    assert f["forgetting_events"].tolist() == [2, math.inf, 0, 0, 1]
    assert f["first_learned_epoch"].tolist() == [1, math.inf, 3, 1, 2]
    assert f["cumulative_accuracy"].tolist() == [0.5, 0.0, 0.5, 1.0, 0.5]
    # margin against the other classes: +1 when correct (2 − 1), −2 when not (0 − 2)
    assert f["aum"].tolist() == pytest.approx([-0.5, -2.0, -0.5, 1.0, -0.5], abs=1e-12)
    q = torch.tensor([2.0, 0.0, 1.0], dtype=torch.float64).softmax(0)  # p when correct; q[1] when not
    pc, pi = q[0].item(), q[1].item()
    assert f["confidence"][0] == pytest.approx((pc + pi) / 2, rel=1e-12)
    assert f["variability"][0] == pytest.approx(abs(pc - pi) / 2, rel=1e-9)  # ddof=0
    assert f["variability"][3] == pytest.approx(0.0, abs=1e-7)
    # epoch 2 reads I, I, I, C, C (epochs 1 and 3 read otherwise)
    el2n_c = math.sqrt((1 - q[0].item()) ** 2 + q[1].item() ** 2 + q[2].item() ** 2)
    el2n_i = math.sqrt((1 - q[1].item()) ** 2 + q[0].item() ** 2 + q[2].item() ** 2)
    assert f["el2n"].tolist() == pytest.approx([el2n_i] * 3 + [el2n_c] * 2, rel=1e-6)


def test_undefined_scores_are_nan_and_epochs_must_be_consecutive():
    s = ExampleScores(3, el2n_epoch=5)
    assert s.frame().isna().all().all()  # no record yet, no GraNd
    logits, y = torch.randn(3, 4), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="epoch 1"):
        s.update(0, logits, y)  # epochs count from 1
    s.update(1, logits, y)
    for bad in (1, 3):  # repeated, skipped
        with pytest.raises(ValueError, match="epoch 2"):
            s.update(bad, logits, y)
    with pytest.raises(ValueError):
        s.update(2, logits[:2], y[:2])
    f = s.frame()
    assert f["el2n"].isna().all() and f["grand"].isna().all()  # epoch 5 never recorded
    assert not f[list(SCORES[:6])].isna().any().any()
    s.set_grand(torch.tensor([4.0, 0.0, 2.25]))
    assert s.frame()["grand"].tolist() == [2.0, 0.0, 1.5]
    with pytest.raises(ValueError):
        s.set_grand(torch.ones(4))


# =============================================================== checkpoint / resume

def test_state_dict_round_trip_mid_run_gives_identical_numbers(run):
    record, y = run
    n = len(y)
    uninterrupted = _fed(record, y)
    uninterrupted.set_grand(torch.arange(n, dtype=torch.float64))
    want = uninterrupted.frame()

    first = _fed(record, y, upto=4)  # EL2N (epoch 3) is before the cut, so it must be carried over
    first.set_grand(torch.arange(n, dtype=torch.float64))
    state = first.state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    for t in range(4, EPOCHS):  # the interrupted object runs on: the state taken must not move
        first.update(t + 1, record[t], y)
    buffer.seek(0)
    # `state` twice: loading must copy it too, or the first resumed run moves the second's start
    for saved in (state, state, torch.load(buffer, weights_only=True)):
        resumed = ExampleScores(n, EL2N_EPOCH)
        resumed.load_state_dict(saved)
        for t in range(4, EPOCHS):
            resumed.update(t + 1, record[t], y)
        pd.testing.assert_frame_equal(resumed.frame(), want, check_exact=True)
    pd.testing.assert_frame_equal(first.frame(), want, check_exact=True)
    with pytest.raises(ValueError):
        ExampleScores(n, EL2N_EPOCH + 1).load_state_dict(state)
    with pytest.raises(ValueError):
        ExampleScores(n - 1, EL2N_EPOCH).load_state_dict(state)


# =============================================================== GraNd vs torch.func

def _per_example_grad_norms(model, x, y):
    """Per-example gradients materialized with torch.func (eval mode), then their norms."""
    model = copy.deepcopy(model).eval()
    params = {k: p.detach() for k, p in model.named_parameters()}

    def example_loss(ps, xi, yi):
        return F.cross_entropy(functional_call(model, ps, (xi[None],)), yi[None])

    per = vmap(grad(example_loss), in_dims=(None, 0, 0))(params, x, y)
    return torch.cat([g.flatten(1) for g in per.values()], 1).double().norm(dim=1)


def _cnn_bn():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 5, 3, stride=2), nn.BatchNorm2d(5), nn.ReLU(),
                         nn.Flatten(), nn.Linear(5 * 3 * 3, 4))


def _mlp_layernorm():  # LayerNorm has no closed form: its norms come from the vmap fallback
    return nn.Sequential(nn.Linear(10, 12), nn.LayerNorm(12), nn.Tanh(), nn.Linear(12, 4))


GRAND_CASES = {"mlp": (lambda: mlp((10,), [16, 16], 4), (10,)), "mlp_layernorm": (_mlp_layernorm, (10,)),
               "cnn_batchnorm": (_cnn_bn, (3, 8, 8))}


@pytest.mark.parametrize("case", GRAND_CASES)
def test_grand_equals_torch_func_per_example_gradients(case):
    torch.manual_seed(0)
    build, shape = GRAND_CASES[case]
    model = build()
    m = 23
    x, y = torch.randn(m, *shape) + 0.5, torch.randint(0, 4, (m,))
    if case == "cnn_batchnorm":  # non-trivial running statistics, so eval mode is really tested
        prime_batchnorm(model, x, batch_size=8)
    model.train()
    first = next(model.parameters())
    first.grad = torch.ones_like(first)
    before = copy.deepcopy(model.state_dict())
    want = _per_example_grad_norms(model, x, y)
    got = grand(model, x, y)
    assert got.dtype == torch.float64 and got.shape == (m,) and got.device.type == "cpu"
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    for chunk_size in (7, 1):  # 7 does not divide 23
        torch.testing.assert_close(grand(model, x, y, chunk_size=chunk_size), got, rtol=1e-6, atol=1e-9)
    # the same pass as m-coherence: its Σ‖g_i‖² is the sum of these
    total = model_coherence_stats(model, x, y, chunk_size=7)["all"].sum_of_sq_norms
    assert per_example_sq_norms(model, x, y, chunk_size=5).sum().item() == pytest.approx(total, rel=1e-6)
    assert all(mod.training for mod in model.modules())  # modes restored, nothing else touched
    assert torch.equal(first.grad, torch.ones_like(first))
    assert all(p.grad is None for p in list(model.parameters())[1:])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# =============================================================== rank statistics

def _table(**cols):
    n = len(next(iter(cols.values())))
    return pd.DataFrame({c: np.asarray(cols.get(c, np.arange(n)), dtype=np.float64) for c in SCORES})


def test_signs_cover_the_scores():
    assert set(HARDNESS_SIGN) == set(SCORES) and set(HARDNESS_SIGN.values()) == {-1, 1}


def test_spearman_on_known_tables():
    difficulty = np.array([0, 1, 2, 3, 4, 5])
    t = _table(forgetting_events=[0, 1, 1.5, 2, 7, math.inf],  # monotone, inf on top
               confidence=[0.9, 0.8, 0.7, 0.6, 0.5, 0.1],
               aum=[1, 1, 1, 1, 1, 1],  # constant
               el2n=[0.1, 0.2, math.nan, 0.3, 0.4, 0.5])
    r = spearman_with(t, difficulty)
    assert list(r) == list(SCORES)
    assert r["forgetting_events"] == pytest.approx(1.0)
    assert r["confidence"] == pytest.approx(-1.0)
    assert math.isnan(r["aum"]) and math.isnan(r["el2n"])
    assert math.isnan(spearman_with(t, np.zeros(6))["confidence"])  # constant difficulty
    z = _table(confidence=[3, 1, 2, 6, 4, 5])
    # ranks (3, 1, 2, 6, 4, 5) against (1, …, 6): Σd² = 12, ρ = 1 − 6Σd²/(n(n²−1))
    assert spearman_with(z, difficulty)["confidence"] == pytest.approx(1 - 6 * 12 / (6 * 35))
    extra = t.assign(label=np.arange(6))  # non-score columns are ignored
    assert spearman_with(extra, difficulty).keys() == r.keys()


def test_auroc_orientation_ties_and_empty_classes():
    corrupt = np.array([False, False, False, True, True])
    t = _table(forgetting_events=[0, 1, 2, math.inf, 5],  # corrupt forget the most
               confidence=[0.9, 0.8, 0.7, 0.2, 0.1],  # corrupt are the least confident
               aum=[3, 2, 1, 4, 5],  # corrupt have the largest margins: the wrong way round
               variability=[1, 1, 1, 1, 1])  # ties everywhere
    a = auroc_corrupt(t, corrupt)
    assert list(a) == list(SCORES)
    assert a["forgetting_events"] == 1.0
    assert a["confidence"] == 1.0  # sign −1: small confidence = hard
    assert a["aum"] == 0.0
    assert a["variability"] == 0.5
    assert a["first_learned_epoch"] == 1.0  # arange: corrupt have the largest values...
    assert a["cumulative_accuracy"] == 0.0  # ...which for a sign −1 score means the easiest
    for empty in (np.zeros(5, bool), np.ones(5, bool)):
        assert all(math.isnan(v) for v in auroc_corrupt(t, empty).values())


def test_auroc_equals_a_brute_force_pairwise_count():
    rng = np.random.default_rng(0)
    n = 60
    values = rng.integers(0, 6, size=(n, len(SCORES))).astype(np.float64)  # many ties
    values[rng.random(values.shape) < 0.1] = math.inf
    t = pd.DataFrame(values, columns=list(SCORES))
    corrupt = rng.random(n) < 0.3
    got = auroc_corrupt(t, corrupt)
    for col in SCORES:
        h = HARDNESS_SIGN[col] * t[col].to_numpy()
        pos, neg = h[corrupt], h[~corrupt]
        wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
        assert got[col] == pytest.approx(wins / (len(pos) * len(neg)), abs=1e-12), col


@pytest.mark.parametrize("variant,clip", [("sgd", 0), ("m3", 0), ("rm3", 0), ("winsorized", 2)])
def test_score_probe_records_the_presented_outputs(variant, clip):
    """ScoreProbe takes each example's record from the training forward pass of its minibatch
    (before the update), whatever the gradient transform; the dropped tail is evaluated at the
    epoch's end; the record handed to ExampleScores equals that slow computation."""
    from cglib.models import build_model
    from cglib.probes import ScoreProbe
    from cglib.transforms import make_gradient_transform
    from cglib.train import batch_indices

    torch.manual_seed(0)
    raw = make_synthetic(seed=1, dim=6, classes=3, n_train_total=40, n_test_total=10)
    x, y = torch.from_numpy(raw["x_train"]), torch.from_numpy(raw["y_train"])
    model = build_model({"name": "mlp", "hidden": [8]}, (6,), 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    transform = make_gradient_transform(variant, clip)
    probe = ScoreProbe(x, y, batch_size=12, el2n_epoch=1, num_classes=3)  # 3 batches, tail of 4
    expected, cache = torch.zeros(40, 3), {}
    probe.rows(0, model, True)
    for step in range(3):
        idx = batch_indices(step, 40, 12, 0, cache)
        with torch.no_grad():
            expected[idx] = model(x[idx])  # θ_step, train mode, before the update
        opt.zero_grad()
        with probe.capture(model, idx):
            transform.backward(model, x[idx], y[idx])
        opt.step()
    tail = torch.ones(40, dtype=torch.bool)
    tail[torch.cat([batch_indices(s, 40, 12, 0, cache) for s in range(3)])] = False
    assert tail.sum() == 4
    with torch.no_grad():
        model.eval()
        expected[tail] = model(x[tail])
        model.train()
    torch.testing.assert_close(probe.outputs[~tail], expected[~tail], rtol=1e-6, atol=1e-6)
    probe.rows(3, model, False)  # the epoch's end: the record goes in
    twin = ExampleScores(40, el2n_epoch=1)
    twin.update(1, expected, y)
    pd.testing.assert_frame_equal(probe.frame().drop(columns="grand"), twin.frame().drop(columns="grand"),
                                  rtol=1e-6, atol=1e-6)
    assert not probe.presented.any()  # a fresh epoch starts


# =============================================================== the reference code's rules (E8)
# Each function below re-implements one rule of a reference repository, from its code, so the
# conventions README "Difficulty scores (E8)" states are checked, not just stated.

def _toneva_forgetting(acc: np.ndarray) -> np.ndarray:
    """mtoneva/example_forgetting, order_examples_by_forgetting.py: forgetting events are
    transitions 1 → 0 between consecutive presentations; an example never learned gets the
    number of presentations (epochs)."""
    n_epochs = acc.shape[0]
    out = []
    for a in acc.T:
        events = int(np.sum((a[1:] - a[:-1]) == -1))
        out.append(n_epochs if not a.any() else events)
    return np.array(out, dtype=np.float64)


def _toneva_first_learned(acc: np.ndarray) -> np.ndarray:
    """Same file: the first presentation (from 0) whose accuracy is 1; NaN if never."""
    return np.array([np.flatnonzero(a == 1)[0] if a.any() else np.nan for a in acc.T], dtype=np.float64)


def _data_diet_forgetting(acc: np.ndarray) -> np.ndarray:
    """mansheej/data_diet, forgetting.py: prev_accs > accs counts a forgetting event (the first
    presentation compares with 0, so it never counts); never-correct examples are inf."""
    prev = np.zeros(acc.shape[1], dtype=np.int32)
    forgets = np.zeros(acc.shape[1])
    never = np.ones(acc.shape[1], dtype=bool)
    for a in acc.astype(np.int32):
        forgets[prev > a] += 1
        prev = a
        never &= ~a.astype(bool)
    forgets[never] = np.inf
    return forgets


def _cartography_forgetfulness(acc: np.ndarray) -> np.ndarray:
    """allenai/cartography, train_dy_filtering.py compute_forgetfulness: 1000 if never correct."""
    out = []
    for trend in acc.T:
        if not trend.any():
            out.append(1000)
            continue
        learnt, forgotten = False, 0
        for ok in trend:
            if learnt and not ok:
                learnt, forgotten = False, forgotten + 1
            elif not learnt and ok:
                learnt = True
        out.append(forgotten)
    return np.array(out, dtype=np.float64)


def _aum_reference(record: np.ndarray, y: np.ndarray, first_epoch: int) -> np.ndarray:
    """asappresearch/aum: AUMCalculator.update averages logit[target] − max other logit over its
    calls; examples/paper_replication/runner.py calls it only when `epoch > 0` (0-based), i.e.
    from the second epoch: first_epoch = 1 there."""
    z = record[first_epoch:]
    target = np.take_along_axis(z, y[None, :, None], 2)[..., 0]
    masked = z.copy()
    np.put_along_axis(masked, y[None, :, None], -np.inf, 2)
    return (target - masked.max(2)).mean(0)


def _cartography_variability(record: np.ndarray, y: np.ndarray) -> np.ndarray:
    """allenai/cartography: variability = np.std of the gold label's probability over epochs."""
    p = np.exp(record - record.max(2, keepdims=True))
    p /= p.sum(2, keepdims=True)
    return np.std(np.take_along_axis(p, y[None, :, None], 2)[..., 0], axis=0)


def _correctness(record: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    return (record.argmax(2) == y).numpy().astype(np.int64)  # (E, n)


def test_forgetting_ranks_as_toneva_data_diet_and_cartography(run):
    """+inf for never-learned examples (data_diet's value) gives the ranks of Toneva et al.'s
    count of epochs and of cartography's 1000, so ρ and AUROC agree with all three."""
    from scipy.stats import rankdata
    record, y = run
    acc = _correctness(record, y)
    ours = _fed(record, y).frame()
    assert (~acc.any(0)).sum() >= 3 and (acc.any(0)).sum() >= 3  # the run has both kinds
    never = ~acc.any(0)
    assert np.array_equal(ours["forgetting_events"].to_numpy(), _data_diet_forgetting(acc))
    for ref in (_toneva_forgetting(acc), _cartography_forgetfulness(acc)):
        assert np.array_equal(ours["forgetting_events"].to_numpy()[~never], ref[~never])
        assert np.array_equal(rankdata(ours["forgetting_events"]), rankdata(ref))
    difficulty = np.random.default_rng(0).integers(0, 4, len(y))
    corrupt = np.arange(len(y)) % 3 == 0
    for ref in (_toneva_forgetting(acc), _cartography_forgetfulness(acc)):
        frame = pd.DataFrame({"forgetting_events": ref})
        assert spearman_with(frame, difficulty) == pytest.approx(
            spearman_with(ours[["forgetting_events"]], difficulty), abs=1e-12)
        assert auroc_corrupt(frame, corrupt) == pytest.approx(
            auroc_corrupt(ours[["forgetting_events"]], corrupt), abs=1e-12)


def test_first_learned_epoch_is_toneva_plus_one_and_inf_for_never():
    record, y = _train_record(seed=1)
    acc = _correctness(record, y)
    ours = _fed(record, y).frame()["first_learned_epoch"].to_numpy()
    ref = _toneva_first_learned(acc)
    assert np.isnan(ref).sum() >= 1 and np.isfinite(ref).sum() >= 1
    assert np.array_equal(ours[~np.isnan(ref)], ref[~np.isnan(ref)] + 1)
    assert np.isinf(ours[np.isnan(ref)]).all()


def test_aum_averages_from_the_first_epoch_where_the_reference_starts_at_the_second(run):
    """The documented departure: AUM here is the reference's rule with first_epoch = 0; fed the
    records from epoch 2 on, it is the reference's own value."""
    record, y = run
    z, yy = record.double().numpy(), y.numpy()
    ours = _fed(record, y).frame()["aum"].to_numpy()
    assert ours == pytest.approx(_aum_reference(z, yy, first_epoch=0), abs=1e-9)
    later = ExampleScores(len(y), 1)
    for t in range(1, len(record)):
        later.update(t, record[t], y)
    assert later.frame()["aum"].to_numpy() == pytest.approx(_aum_reference(z, yy, first_epoch=1), abs=1e-9)
    assert np.abs(ours - _aum_reference(z, yy, first_epoch=1)).max() > 1e-3  # the departure is real


def test_variability_auroc_has_no_fixed_side_for_corrupt_labels():
    """Cartography's rule (np.std of p(label)), and why its AUROC is read two-sided: corrupt labels
    the model never fits have p ≈ 0 throughout (low variability, AUROC < 0.5), ones it memorises
    late swing from 0 to 1 (high variability, AUROC > 0.5)."""
    from cglib.scores import TWO_SIDED
    assert TWO_SIDED == ("variability",) and HARDNESS_SIGN["variability"] == +1
    rng = np.random.default_rng(0)
    n_epochs, n, k = 10, 200, 4
    y = rng.integers(0, k, n)
    corrupt = np.arange(n) < 50
    t = np.linspace(0, 1, n_epochs)[:, None]
    # pristine: learned gradually (gold logit rising 0 → 4 at an example's own pace)
    pace = rng.uniform(0.5, 1.5, n)[None, :]
    gold_pristine = 4 * np.clip(t * pace, 0, 1)
    for corrupt_gold, side in ((np.full((n_epochs, 1), -4.0), "low"),  # never fitted
                               (np.where(t > 0.7, 8.0, -4.0), "high")):  # memorised late
        gold = np.where(corrupt[None, :], corrupt_gold, gold_pristine)
        z = rng.normal(0, 0.1, (n_epochs, n, k))
        np.put_along_axis(z, y[None, :, None], gold[..., None], 2)
        record = torch.from_numpy(z)
        frame = _fed(record, torch.from_numpy(y), el2n_epoch=1).frame()
        assert frame["variability"].to_numpy() == pytest.approx(_cartography_variability(z, y), abs=1e-9)
        auc = auroc_corrupt(frame[["variability"]], corrupt)["variability"]
        assert (auc < 0.2) if side == "low" else (auc > 0.8), (side, auc)


def test_rank_statistics_equal_scipy_with_ties_and_never_learned():
    """spearman_with and auroc_corrupt work on pandas ranks (no scipy import in a training job):
    the same numbers as scipy.stats.spearmanr and mannwhitneyu's U / (n1·n0), ties and +inf included."""
    from scipy.stats import mannwhitneyu, spearmanr

    rng = np.random.default_rng(0)
    for trial in range(5):
        n = 200
        forgetting = rng.integers(0, 4, n).astype(float)
        forgetting[rng.random(n) < 0.1] = np.inf  # never learned
        el2n = np.round(rng.random(n), 2)  # many ties
        frame = pd.DataFrame({"forgetting_events": forgetting, "el2n": el2n})
        difficulty = rng.integers(0, 9, n)
        corrupt = rng.random(n) < 0.3
        rho = spearman_with(frame, difficulty)
        auc = auroc_corrupt(frame, corrupt)
        for col in ("forgetting_events", "el2n"):
            assert rho[col] == pytest.approx(spearmanr(frame[col], difficulty).statistic, abs=1e-12)
            h = HARDNESS_SIGN[col] * frame[col].to_numpy()
            u = mannwhitneyu(h[corrupt], h[~corrupt], method="asymptotic").statistic
            assert auc[col] == pytest.approx(u / (corrupt.sum() * (~corrupt).sum()), abs=1e-12)


# =============================================================== small exact cases (fast)

def _random_record(epochs=5, n=7, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(epochs, n, k, generator=g, dtype=torch.float64) * 2, torch.randint(0, k, (n,), generator=g)


def test_small_state_round_trip_carries_every_aggregate():
    record, y = _random_record()
    want = _fed(record, y, el2n_epoch=2)
    want.set_grand(torch.arange(7.0))
    first = _fed(record, y, el2n_epoch=2, upto=3)
    first.set_grand(torch.arange(7.0))
    state = first.state_dict()
    assert state["n"] == 7 and state["el2n_epoch"] == 2 and state["epochs"] == 3
    first.update(4, record[3], y)  # runs on: the state taken must not move
    resumed = ExampleScores(7, 2)
    resumed.load_state_dict(state)
    assert resumed.epochs == 3
    for t in (3, 4):
        resumed.update(t + 1, record[t], y)
    pd.testing.assert_frame_equal(resumed.frame(), want.frame(), check_exact=True)
    for n, e in ((7, 3), (6, 2)):
        with pytest.raises(ValueError, match="does not fit"):
            ExampleScores(n, e).load_state_dict(state)


def test_update_checks_each_shape_on_its_own():
    s = ExampleScores(3, el2n_epoch=1)
    logits, y = torch.randn(3, 4), torch.tensor([0, 1, 2])
    for bad_logits, bad_y in ((logits[:, :, None], y), (torch.randn(4, 4), y), (logits, y[:, None])):
        with pytest.raises(ValueError, match="expected logits"):
            s.update(1, bad_logits, bad_y)
    s.update(1, logits, y)
    with pytest.raises(ValueError, match="expected 3 squared norms"):
        s.set_grand(torch.ones(3, 1))


def test_variability_never_nan_when_p_does_not_move():
    # E[p²] − E[p]² of a constant p rounds below 0 for some p: clamped to 0, not sqrt(< 0) = NaN
    y = torch.zeros(50, dtype=torch.long)
    z = torch.stack([torch.linspace(-3, 3, 50, dtype=torch.float64), torch.zeros(50, dtype=torch.float64)], 1)
    s = ExampleScores(50, el2n_epoch=1)
    for t in range(3):
        s.update(t + 1, z, y)
    mean_p = s.sum_p / 3
    assert ((s.sum_p2 / 3 - mean_p.square()) < 0).sum() >= 5  # the rounding this test is about
    v = s.frame()["variability"]
    assert not v.isna().any() and (v.abs() < 1e-7).all()


def test_spearman_of_two_valued_scores_and_nan_difficulty():
    t = _table(aum=[0, 0, 0, 1, 1, 1])
    r = spearman_with(t, np.array([0, 1, 2, 3, 4, 5]))
    # ranks (2, 2, 2, 5, 5, 5) against 1…6: Σ(r−3.5)(d−3.5) = 13.5, Σ(r−3.5)² = 13.5, Σ(d−3.5)² = 17.5
    assert r["aum"] == pytest.approx(13.5 / math.sqrt(13.5 * 17.5), abs=1e-12)
    assert spearman_with(t, np.array([0, 0, 0, 1, 1, 1]))["aum"] == pytest.approx(1.0)
    assert all(math.isnan(v) for v in spearman_with(t, np.array([0, 1, 2, math.nan, 4, 5])).values())
    with pytest.raises(ValueError, match="6 scores but 5 difficulties"):
        spearman_with(t, np.arange(5))
    with pytest.raises(ValueError, match="6 scores but 5 corrupt flags"):
        auroc_corrupt(t, np.ones(5, bool))
    a = auroc_corrupt(_table(aum=[1, 2, 3, math.nan, 0, 0]), np.array([1, 0, 0, 0, 1, 1], bool))
    assert math.isnan(a["aum"]) and a["el2n"] == pytest.approx(6 / 9)  # arange: corrupt 0, 4, 5 beat 0 + 3 + 3 of 1, 2, 3


def test_score_rows_are_tidy_e8_rows():
    from cglib.scores import score_rows
    pe = _table(aum=[3, 2, 1, 0], el2n=[0, 1, 2, 3]).assign(corrupt=[True, True, False, False],
                                                            difficulty=[0, 1, 2, 3])
    rows = score_rows(pe, step=40, epoch=2.5)
    want_rho = spearman_with(pe, pe["difficulty"].to_numpy())
    want_auc = auroc_corrupt(pe, pe["corrupt"].to_numpy())
    assert len(rows) == 2 * len(SCORES)
    assert all(set(r) == {"metric", "value", "experiment", "split", "step", "epoch"} for r in rows)
    assert all((r["experiment"], r["split"], r["step"], r["epoch"]) == ("E8", "train", 40, 2.5) for r in rows)
    assert [r["metric"] for r in rows] == ([f"spearman_difficulty_{s}" for s in SCORES]
                                           + [f"auroc_corrupt_{s}" for s in SCORES])
    assert rows[SCORES.index("aum")]["value"] == pytest.approx(-1.0)
    assert rows[len(SCORES) + SCORES.index("aum")]["value"] == 0.0  # corrupt have the large margins
    assert [r["value"] for r in rows] == pytest.approx(list(want_rho.values()) + list(want_auc.values()), nan_ok=True)
    # no difficulty: AUROC only; all or no example corrupt: no AUROC
    assert [r["metric"] for r in score_rows(pe.drop(columns="difficulty"), 1, 1.0)] == [
        f"auroc_corrupt_{s}" for s in SCORES]
    for flags in ([True] * 4, [False] * 4):
        assert [r["metric"] for r in score_rows(pe.assign(corrupt=flags), 1, 1.0)] == [
            f"spearman_difficulty_{s}" for s in SCORES]


def test_grand_of_a_linear_model_by_hand():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
    want = []
    for i in range(5):  # ∇ of the cross-entropy of one example, by autograd
        model.zero_grad()
        F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        want.append(math.sqrt(sum(p.grad.double().square().sum().item() for p in model.parameters())))
    got = grand(model, x, y)
    assert got.dtype == torch.float64 and got.tolist() == pytest.approx(want, rel=1e-6)
    assert grand(model, x, y, chunk_size=2).tolist() == pytest.approx(want, rel=1e-6)


def test_forgetting_of_an_example_correct_in_exactly_one_record_is_counted_not_inf():
    logits = torch.tensor([[[0.0, 2.0]], [[2.0, 0.0]], [[0.0, 2.0]]])  # I, C, I for label 0
    s = ExampleScores(1, el2n_epoch=1)
    for t in range(3):
        s.update(t + 1, logits[t], torch.zeros(1, dtype=torch.long))
    assert s.frame()["forgetting_events"].tolist() == [1.0]
