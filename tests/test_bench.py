"""The bench's peers (benchmarks/bench_peers.py): every library's per-example squared norms are
checked against a float64 torch.func reference before they are timed, a wrong value stops the
run, and a peer that cannot take a model is a row with its reason."""
import os

import pytest
import torch
from torch import nn

from benchmarks import bench_peers
from benchmarks.bench_peers import AT_MOST, TYPICAL, Disagreement, agree


def test_agreement_check_fails_a_library_that_is_off():
    want = torch.linspace(1.0, 2.0, 100, dtype=torch.float64)
    assert agree("x", want.float(), want) < 1e-7
    kink = want.clone()
    kink[3] *= 1 + AT_MOST / 2  # one example across a ReLU kink: allowed
    assert agree("x", kink, want) == 0.0
    with pytest.raises(Disagreement, match="x: per-example squared norms off by 1.0e-03"):
        agree("x", want * (1 + 1e-3), want)  # every example off (a dropped bias term): not
    worse = want.clone()
    worse[3] *= 1 + 2 * AT_MOST
    with pytest.raises(Disagreement):
        agree("x", worse, want)
    with pytest.raises(Disagreement):
        agree("x", want * (1 + 2 * TYPICAL), want)
    with pytest.raises(Disagreement):
        agree("x", torch.full((100,), float("nan")), want)
    with pytest.raises(Disagreement, match=r"\(99,\) values"):
        agree("x", want[:99], want)


def tiny_cases():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 10))
    bn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 10)).eval()
    yield "mlp", "MLP 6-8-10", mlp, (6,), (5,), 0.8
    yield "bn", "BatchNorm CNN", bn, (1, 6, 6), (4,), None


def test_every_library_is_measured_beside_cglib_or_says_why_not():
    rows = {r["name"]: r for r in bench_peers.run(quick=True, case_list=tiny_cases())}
    assert list(rows) == [f"sq_norms_{case}[{lib}]" for case in ("mlp_b5", "bn_b4")
                          for lib in ("cglib", "backpack", "opacus", "torch.func")]
    for name, row in rows.items():
        if name == "sq_norms_bn_b4[opacus]":  # Opacus refuses BatchNorm (batch statistics in training)
            assert row["ratio"] is None and row["note"].startswith("— ") and "BatchNorm" in row["note"], row
            continue
        assert row["ratio"] > 0 and row["note"].startswith("agrees with float64 torch.func to "), row
    assert rows["sq_norms_mlp_b5[cglib]"]["target"] == 0.8 and rows["sq_norms_mlp_b5[opacus]"]["target"] is None
    # torch.func takes well under a second here: interleaved with the rest, not timed once
    assert rows["sq_norms_mlp_b5[torch.func]"]["note"].endswith("interleaved runs")


def test_a_slow_torch_func_is_timed_once(monkeypatch):
    monkeypatch.setattr(bench_peers, "ONCE_ABOVE", -1.0)  # every call counts as slow
    rows = {r["name"]: r for r in bench_peers.run(quick=True, case_list=tiny_cases())}
    assert rows["sq_norms_mlp_b5[torch.func]"]["note"].endswith("timed once")
    assert rows["sq_norms_mlp_b5[cglib]"]["note"].endswith("interleaved runs")  # only torch.func may be


def test_a_library_that_disagrees_stops_the_run(monkeypatch):
    monkeypatch.setitem(bench_peers.LIBRARIES, "backpack", lambda model, x, y: lambda: bench_peers.reference(model, x, y) * 1.01)
    with pytest.raises(Disagreement, match="backpack"):
        bench_peers.run(quick=True, case_list=tiny_cases())


def test_the_winsorized_parts_timed_are_the_steps_own_work():
    """The bench's breakdown times the step's own parts: its per-example pass, order statistics
    and clipped sums give the transform's gradients (biases in the one dense source)."""
    from benchmarks import bench_robust
    from cglib import robust
    from cglib.transforms import make_gradient_transform
    widths, B = (6, 5, 10), 8  # data() draws labels of 10 classes
    robust.set_compile("0")  # eagerly: the same source, without a minute of compiling
    try:
        parts = bench_robust.winsorized_parts(widths, 1, batch=B)
        assert list(parts) == ["per_example", "order_stats", "clipped_sums"]
        parts["order_stats"]()  # runs on its own
        sums = [s / B for s in parts["clipped_sums"]()]
        torch.manual_seed(0)
        model = bench_robust.mlp(*widths)
        x, y = bench_robust.data(widths[0], B)
        make_gradient_transform("winsorized", 1).backward(model, x, y)
    finally:
        robust.set_compile(os.environ.get("CGLIB_COMPILE", "auto"))
    torch.testing.assert_close(sums[0], model[0].weight.grad)
    torch.testing.assert_close(sums[1], model[2].weight.grad)
    torch.testing.assert_close(sums[2], torch.cat([model[0].bias.grad, model[2].bias.grad]))
    losses, grads = parts["per_example"]()
    assert losses.shape == (B,) and set(grads) == {n for n, _ in model.named_parameters()}
