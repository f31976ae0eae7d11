"""Robust aggregators and gradient transforms against straightforward references
(torch.median of stacks, full sorts, torch.func per-example gradients, manual updates)."""

import copy
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cglib import robust
from cglib.pergrad import per_example_grads_reference
from cglib.robust import median_of_3, winsorized_mean, winsorized_outer_mean
from cglib.transforms import make_gradient_transform

TIGHT = dict(rtol=1e-6, atol=1e-6)


@pytest.fixture(autouse=True)
def eager_by_default():
    """Eager unless a test asks for `compiled`; restores the process-wide setting."""
    old = robust._compile_mode
    robust.set_compile("0")
    yield
    robust.set_compile(old)


@pytest.fixture
def compiled():
    robust.set_compile("1")
    yield
    assert not robust._compile_failed, "torch.compile failed; the eager fallback was used"


def ints(*shape, seed=0, lo=-3, hi=4):
    """Integer-valued floats: many ties, and every sum is exact."""
    return torch.randint(lo, hi, shape, generator=torch.Generator().manual_seed(seed)).float()


def sort_winsorized(g, c):
    """The definition, summed in float64 (so the reference itself carries no float32 rounding)."""
    s = g.sort(0).values
    return torch.clamp(g.double(), s[c].double(), s[g.shape[0] - 1 - c].double()).mean(0).to(g.dtype)


# ------------------------------------------------------------------ median_of_3 -------------
@pytest.mark.parametrize("shape", [(), (7,), (4, 5), (3, 2, 6)])
def test_median_of_3_matches_torch_median_with_ties(shape):
    a, b, c = (ints(*shape, seed=s, lo=-2, hi=3) for s in range(3))
    expected = torch.stack([a, b, c]).median(0).values
    assert torch.equal(median_of_3(a, b, c), expected)
    for perm in [(b, c, a), (c, a, b), (a, c, b)]:  # symmetric in its arguments
        assert torch.equal(median_of_3(*perm), expected)


def test_medians_in_place_eager_and_compiled_agree_exactly(compiled):
    shapes = [(50, 30), (30,), (3, 4, 5), (1,)]  # one call over a whole model's parameters
    a, b, c = ([torch.randn(*s, generator=torch.Generator().manual_seed(10 * k + i))
                for i, s in enumerate(shapes)] for k in range(3))
    expected = [median_of_3(*t) for t in zip(a, b, c)]
    fused = robust._medians_(a, [t.clone() for t in b], c)
    assert not robust._compile_failed
    robust.set_compile("0")
    three_pass = robust._medians_(a, [t.clone() for t in b], c, [torch.empty_like(t) for t in a])
    no_scratch = robust._medians_(a, [t.clone() for t in b], c)
    for e, f, t, n in zip(expected, fused, three_pass, no_scratch):
        assert torch.equal(f, e) and torch.equal(t, e) and torch.equal(n, e)


def test_auto_compiles_medians_only_for_models_above_the_size_floor():
    small = [torch.zeros(robust.MEDIANS_COMPILE_MIN - 10), torch.zeros(9)]
    big = small + [torch.zeros(1)]  # exactly the floor
    try:
        robust.set_compile("auto")
        assert not robust._compile_medians(small) and robust._compile_medians(big)
        assert not robust._compile_medians([])
        robust.set_compile("1")  # forced: every size
        assert robust._compile_medians(small)
        robust.set_compile("0")
        assert not robust._compile_medians(big)
    finally:
        robust.set_compile(os.environ.get("CGLIB_COMPILE", "auto"))


# ------------------------------------------------------------------ winsorized_mean ---------
CASES = [(1, 0, (3,)), (5, 2, (7,)), (6, 2, (4, 3)), (9, 1, (2, 2, 2)), (25, 3, (1000,)),
         (12, 5, (40,)), (23, 11, (30,))]


@pytest.mark.parametrize("B,c,shape", CASES)
def test_winsorized_mean_matches_sort_reference_with_ties(B, c, shape):
    g = ints(B, *shape, seed=B + c)
    out = winsorized_mean(g, c)
    assert out.shape == shape
    torch.testing.assert_close(out, sort_winsorized(g, c), **TIGHT)


@pytest.mark.parametrize("B,c,shape", CASES)
def test_winsorized_mean_matches_sort_reference_on_continuous_data(B, c, shape):
    g = torch.randn(B, *shape, generator=torch.Generator().manual_seed(B)) * 10 ** torch.randint(
        -3, 4, (B, *shape), generator=torch.Generator().manual_seed(c))  # mixed scales
    torch.testing.assert_close(winsorized_mean(g, c), sort_winsorized(g, c), **TIGHT)


def test_winsorized_mean_is_not_swamped_by_the_outliers_it_clips():
    """The clipped sum is formed as plain sum - clipped values + their replacements: in float32
    the outliers' rounding error (1e6 x eps) would swamp a mean of order 1."""
    g = torch.randn(40, 500, generator=torch.Generator().manual_seed(3))
    g[:2] = 1e6 * torch.sign(torch.randn(2, 500, generator=torch.Generator().manual_seed(4)))
    d, a = g[:, :50].clone(), torch.ones(40, 10)  # the outer form of the same rows
    torch.testing.assert_close(winsorized_mean(g, 2), sort_winsorized(g, 2), **TIGHT)
    torch.testing.assert_close(winsorized_outer_mean(d, a, 2),
                               sort_winsorized(d[:, :, None] * a[:, None, :], 2), **TIGHT)


@pytest.mark.parametrize("B", [20, 25])  # 25: two chunks of 10 and a short one of 5
def test_winsorized_mean_compiled_streaming(compiled, B):
    g = ints(B, 3000, seed=B)
    g[:, 0] = 1.0  # a coordinate where every value ties
    torch.testing.assert_close(winsorized_mean(g, 2), sort_winsorized(g, 2), **TIGHT)


def test_percentile_counts_are_the_indices_numpy_nearest_picks():
    np = pytest.importorskip("numpy")
    for B in range(1, 301):
        t = np.arange(B)  # distinct values: the percentile's value is its sorted index
        for c in range(51):
            lo, hi = np.percentile(t, [c, 100 - c], method="nearest")
            assert robust.percentile_counts(c, B) == (int(lo), B - 1 - int(hi)), (B, c)
    assert robust.percentile_counts(2, 100) == robust.clip_counts(2, 100) == (2, 2)
    assert robust.percentile_counts(2, 20) == (0, 0) and robust.percentile_counts(2, 256) == (5, 5)


def np_winsorize_mean(g, c):
    """The CG code's np_winsorize over the batch (its last axis there, our first), then the
    mean: clip at np.percentile(..., [c, 100 - c], interpolation='nearest')."""
    import numpy as np
    t = g.double().numpy()
    lo, hi = np.percentile(t, [c, 100 - c], axis=0, method="nearest", keepdims=True)
    return torch.from_numpy(np.clip(t, lo, hi).mean(0))


@pytest.mark.parametrize("use_compile,B,c", [(False, 20, 2), (False, 20, 8), (False, 256, 2), (False, 256, 13),
                                             (False, 100, 2), (False, 99, 30),
                                             (True, 20, 8), (True, 256, 2)])  # compiling: a graph per shape
def test_both_readings_against_references(use_compile, B, c):
    """percentile reading = the CG code's np_winsorize; order-statistic reading = a full sort."""
    robust.set_compile("1" if use_compile else "0")
    g = torch.randn(B, 300, generator=torch.Generator().manual_seed(B + c), dtype=torch.float64)
    got = winsorized_mean(g, robust.clip_counts(c, B, "percentile"))
    torch.testing.assert_close(got, np_winsorize_mean(g, c), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(winsorized_mean(g, robust.clip_counts(c, B)), sort_winsorized(g, c),
                               rtol=1e-12, atol=1e-12)
    if B == 20 and c == 2:  # the percentile reading clips nothing here, the other does
        torch.testing.assert_close(got, g.mean(0), rtol=1e-12, atol=1e-12)
        assert not torch.allclose(winsorized_mean(g, 2), g.mean(0))
    assert not robust._compile_failed


def test_winsorized_transform_in_the_percentile_reading_matches_torch_func():
    """The transform's p.grad under reading="percentile" = np_winsorize of torch.func
    per-example gradients (B = 256, c = 2: 5 values per side)."""
    from torch.func import functional_call, grad, vmap
    B, c = 256, 2
    model = mlp()
    x, y = batches(1, B=B)[0]
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(ps, xi, yi):
        return F.cross_entropy(functional_call(model, ps, (xi[None],)), yi[None])
    per = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    t = make_gradient_transform("winsorized", c, reading="percentile")
    t.backward(model, x, y)
    for name, p in model.named_parameters():
        want = np_winsorize_mean(per[name].reshape(B, -1), c).reshape(p.shape).float()
        torch.testing.assert_close(p.grad, want, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="winsorization"):
        make_gradient_transform("winsorized", 2).load_state_dict(t.state_dict())


@pytest.mark.parametrize("use_compile", [False, True])
def test_winsorized_outer_mean_matches_materialized(use_compile):
    robust.set_compile("1" if use_compile else "0")
    delta, act = ints(20, 30, seed=1, lo=-2, hi=3), ints(20, 40, seed=2, lo=0, hi=3)
    full = delta[:, :, None] * act[:, None, :]
    out = robust.winsorized_outer_mean(delta, act, 2)
    torch.testing.assert_close(out, sort_winsorized(full, 2), **TIGHT)
    assert not robust._compile_failed


@pytest.mark.parametrize("use_compile", [False, True])
@pytest.mark.parametrize("c", [0, 3])
def test_winsorized_means_of_mixed_sources_in_one_stream(use_compile, c):
    robust.set_compile("1" if use_compile else "0")
    B = 23  # two chunks of 10 and a short one of 3
    d1, a1 = ints(B, 6, seed=3, lo=-2, hi=3), ints(B, 9, seed=4, lo=0, hi=3)
    d2, a2 = torch.randn(B, 4, generator=torch.Generator().manual_seed(5)), ints(B, 3, seed=6)
    dense = ints(B, 50, seed=7)
    got = robust.winsorized_means([("outer", (d1, a1)), ("dense", (dense,)),
                                   ("outer", (d2, a2))], c)
    expected = [sort_winsorized(d1[:, :, None] * a1[:, None, :], c), sort_winsorized(dense, c),
                sort_winsorized(d2[:, :, None] * a2[:, None, :], c)]
    for out, ref in zip(got, expected):
        torch.testing.assert_close(out, ref, **TIGHT)
    assert not robust._compile_failed
    with pytest.raises(ValueError, match="rows"):
        robust.winsorized_means([("dense", (dense,)), ("dense", (dense[:-1],))], c)


def test_winsorized_mean_c0_is_mean_and_invalid_c_raises():
    g = torch.randn(8, 5)
    assert torch.equal(winsorized_mean(g, 0), g.mean(0))
    assert not torch.equal(winsorized_mean(g, 1), g.mean(0))
    for bad in (-1, 4, 5, 1.0, True, None):
        with pytest.raises(ValueError, match="c"):
            winsorized_mean(g, bad)
    with pytest.raises(ValueError, match="floating"):
        winsorized_mean(torch.ones(5, 2, dtype=torch.long), 1)


# ------------------------------------------------------------------ W&S §3.2 example --------
def test_m3_suppresses_idiosyncratic_directions_exactly():
    """g_i = common + u_i, the u_i on disjoint coordinates, none overlapping the common part:
    the median of the 3 group means is exactly the common part; the mean is not."""
    b, d_common = 4, 5
    m = 3 * b
    d = d_common + 2 * m
    common = torch.zeros(d)
    common[:d_common] = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.5])
    u = torch.zeros(m, d)
    for i in range(m):  # two private coordinates per example
        u[i, d_common + 2 * i: d_common + 2 * i + 2] = ints(2, seed=i, lo=1, hi=9) * (-1) ** i
    g = common + u
    group_means = [grp.mean(0) for grp in g.chunk(3)]
    assert torch.equal(median_of_3(*group_means), common)
    assert not torch.allclose(g.mean(0), common)


# ------------------------------------------------------------------ transforms --------------
def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 4))


def batches(n, B=12, n_in=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(B, n_in, generator=g), torch.randint(0, 4, (B,), generator=g))
            for _ in range(n)]


def sgd_update(model, grads, lr):
    with torch.no_grad():
        for p, g in zip(model.parameters(), grads):
            p.sub_(lr * g)


def mean_grads(model, x, y):
    return torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))


def run_transform(model, opt, name, data, clip=0):
    t = make_gradient_transform(name, clip)
    losses = []
    for x, y in data:
        opt.zero_grad()
        losses.append(t.backward(model, x, y))
        opt.step()
    return t, losses


@pytest.mark.parametrize("use_compile", [False, True])
def test_winsorized_step_matches_vmap_sort_reference(use_compile):
    robust.set_compile("1" if use_compile else "0")
    model, lr, c = mlp(), 0.5, 2
    ref = copy.deepcopy(model)
    [(x, y)] = batches(1, B=20)
    _, [loss] = run_transform(model, torch.optim.SGD(model.parameters(), lr=lr), "winsorized",
                              [(x, y)], clip=c)
    per_ex = per_example_grads_reference(ref, x, y)
    torch.testing.assert_close(loss, F.cross_entropy(ref(x), y), **TIGHT)
    sgd_update(ref, [sort_winsorized(g, c) for g in per_ex.values()], lr)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert not robust._compile_failed


def test_winsorized_step_on_cnn_with_batchnorm_in_eval_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 4 * 4, 4)).eval()
    ref, lr, c = copy.deepcopy(model), 0.3, 1
    x, y = torch.randn(9, 1, 6, 6), torch.randint(0, 4, (9,))
    run_transform(model, torch.optim.SGD(model.parameters(), lr=lr), "winsorized", [(x, y)], c)
    per_ex = per_example_grads_reference(ref, x, y)
    sgd_update(ref, [sort_winsorized(g, c) for g in per_ex.values()], lr)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_sgd_and_winsorized_c0_are_plain_sgd():
    data = batches(3)
    plain = mlp()
    for x, y in data:
        sgd_update(plain, mean_grads(plain, x, y), 0.1)
    for name, clip in [("sgd", 0), ("winsorized", 0)]:
        model = mlp()
        _, losses = run_transform(model, torch.optim.SGD(model.parameters(), lr=0.1), name, data,
                                  clip)
        assert all(loss.dim() == 0 and not loss.requires_grad for loss in losses)
        for p, q in zip(model.parameters(), plain.parameters()):
            torch.testing.assert_close(p, q, **TIGHT)


def test_m3_matches_median_of_group_gradients():
    data, lr = batches(4), 0.2
    model, ref = mlp(), mlp()
    _, losses = run_transform(model, torch.optim.SGD(model.parameters(), lr=lr), "m3", data)
    for (x, y), loss in zip(data, losses):
        torch.testing.assert_close(loss, F.cross_entropy(ref(x), y), **TIGHT)
        groups = [mean_grads(ref, xs, ys) for xs, ys in zip(x.chunk(3), y.chunk(3))]
        sgd_update(ref, [torch.stack(gs).median(0).values for gs in zip(*groups)], lr)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, **TIGHT)


def rolling_reference(name, model, data, opt, spoil=False):
    """Straightforward RM3/RA3: keep every raw gradient; steps 0 and 1 use what exists."""
    history = []
    for x, y in data:
        history.insert(0, mean_grads(model, x, y))
        window = history[:3]
        if len(window) == 2 or name == "ra3":
            agg = [torch.stack(gs).mean(0) for gs in zip(*window)]
        else:
            agg = [torch.stack(gs).median(0).values for gs in zip(*window)]
        opt.zero_grad()
        for p, g in zip(model.parameters(), agg):
            p.grad = g.clone()
        opt.step()


@pytest.mark.parametrize("name", ["rm3", "ra3"])
@pytest.mark.parametrize("optim", ["sgd", "momentum", "adam"])
def test_rolling_transforms_match_reference(name, optim):
    make_opt = {"sgd": lambda ps: torch.optim.SGD(ps, lr=0.2),
                "momentum": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
                "adam": lambda ps: torch.optim.Adam(ps, lr=0.01)}[optim]
    data = batches(6)
    model, ref = mlp(), mlp()
    t = make_gradient_transform(name, warmup="partial")
    opt = make_opt(model.parameters())
    for x, y in data:
        t.backward(model, x, y)
        opt.step()
        # Zeroing p.grad in place (like clip_grad_norm_ or zero_grad(set_to_none=False), which
        # edit it in place) must not reach the transform's gradient history.
        opt.zero_grad(set_to_none=False)
    rolling_reference(name, ref, data, make_opt(ref.parameters()))
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


class RingBuffer:
    """The W&S reference optimizers (coherent_gradients/weak_and_strong/optimizers/rm3.py,
    ra3.py) re-written: per parameter a ring buffer of 3 initialised with clones of the first
    gradient and a counter; no update until the counter reaches 3; then RM3 steps by
    sum - min - max of the buffer, RA3 by sum / 3."""

    def __init__(self, params, lr, name):
        self.params, self.lr, self.name, self.state = list(params), lr, name, {}

    def step(self):
        for p in self.params:
            st = self.state.get(p)
            if st is None:
                st = self.state[p] = {"buf": [p.grad.clone() for _ in range(3)], "n": 1}
            else:
                st["buf"][st["n"] % 3].copy_(p.grad)
                st["n"] += 1
            if st["n"] >= 3:
                a, b, c = st["buf"]
                agg = (a + b + c - torch.min(torch.min(a, b), c) - torch.max(torch.max(a, b), c)
                       if self.name == "rm3" else (a + b + c) / 3.0)
                p.data.add_(agg, alpha=-self.lr)


@pytest.mark.parametrize("name", ["rm3", "ra3"])
def test_reference_warmup_matches_the_reference_ring_buffer_over_ten_steps(name):
    data, lr = batches(10), 0.2
    model, ref = mlp(), mlp()
    t = make_gradient_transform(name)  # the default warm-up is the reference's
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    ring = RingBuffer(ref.parameters(), lr, name)
    start = [p.detach().clone() for p in model.parameters()]
    for step, (x, y) in enumerate(data):
        opt.zero_grad()
        t.backward(model, x, y)
        opt.step()
        for p in ref.parameters():
            p.grad = None
        F.cross_entropy(ref(x), y).backward()
        ring.step()
        for p, q in zip(model.parameters(), ref.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        moved = any(not torch.equal(p, s) for p, s in zip(model.parameters(), start))
        assert moved == (step >= 2), step  # steps 0 and 1 fill the buffer, nothing else


def test_reference_warmup_leaves_momentum_and_weight_decay_untouched():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    start = [p.detach().clone() for p in model.parameters()]
    t = make_gradient_transform("rm3")
    for x, y in batches(2):
        t.backward(model, x, y)
        opt.step()
    assert all(torch.equal(p, s) for p, s in zip(model.parameters(), start))
    assert not opt.state or all("momentum_buffer" not in v or v["momentum_buffer"] is None
                                for v in opt.state.values())
    with pytest.raises(ValueError, match="warm-up"):
        make_gradient_transform("rm3", warmup="partial").load_state_dict(t.state_dict())


@pytest.mark.parametrize("name", ["rm3", "m3"])
def test_compiled_median_transforms_equal_eager_bit_for_bit(compiled, name):
    data, models = batches(5), []
    for mode in ("1", "0"):
        robust.set_compile(mode)
        model = mlp()
        run_transform(model, torch.optim.SGD(model.parameters(), lr=0.2), name, data)
        assert not robust._compile_failed  # (set_compile resets the flag)
        models.append(model)
    robust.set_compile("1")
    assert all(torch.equal(p, q) for p, q in zip(*(m.parameters() for m in models)))


@pytest.mark.parametrize("name", ["sgd", "winsorized", "m3", "rm3", "ra3"])
@pytest.mark.parametrize("optim", ["momentum", "adam"])
def test_every_transform_composes_with_momentum_and_adam(name, optim):
    model = mlp()
    before = [p.detach().clone() for p in model.parameters()]
    opt = (torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9) if optim == "momentum"
           else torch.optim.Adam(model.parameters(), lr=1e-3))
    _, losses = run_transform(model, opt, name, batches(4), clip=2 if name == "winsorized" else 0)
    assert all(torch.isfinite(loss) for loss in losses)
    for p, b in zip(model.parameters(), before):
        assert torch.isfinite(p).all() and not torch.equal(p, b)


@pytest.mark.parametrize("name", ["rm3", "ra3", "m3", "winsorized"])
def test_resume_from_saved_state_is_exact(tmp_path, name):
    data, k, clip = batches(7), 3, 2 if name == "winsorized" else 0

    def fresh():
        model = mlp()
        return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), \
            make_gradient_transform(name, clip)

    def steps(model, opt, t, part):
        for x, y in part:
            opt.zero_grad()
            t.backward(model, x, y)
            opt.step()

    model, opt, t = fresh()
    steps(model, opt, t, data[:k])
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "transform": t.state_dict()}
    torch.save(state, tmp_path / "ckpt.pt")
    steps(model, opt, t, data[k:])  # the unbroken run continues, mutating its buffers

    # Also the transform's in-memory state_dict taken before the run went on: it must be a
    # snapshot. (Model/optimizer state_dicts are live references by torch's design, and
    # Optimizer.load_state_dict adopts the loaded tensors, so reload the file each time.)
    for in_memory in (False, True):
        source = torch.load(tmp_path / "ckpt.pt")
        if in_memory:
            source["transform"] = state["transform"]
        m2, o2, t2 = fresh()
        m2.load_state_dict(source["model"])
        o2.load_state_dict(source["opt"])
        t2.load_state_dict(source["transform"])
        steps(m2, o2, t2, data[k:])
        for p, q in zip(model.parameters(), m2.parameters()):
            assert torch.equal(p, q)
    if name in ("rm3", "ra3"):
        assert t.steps == len(data) and len(t.state_dict()["history"]) == 2


def test_transform_argument_errors():
    with pytest.raises(ValueError, match="unknown"):
        make_gradient_transform("rm5")
    with pytest.raises(ValueError, match="only applies"):
        make_gradient_transform("rm3", clip=2)
    with pytest.raises(ValueError, match="integer"):
        make_gradient_transform("winsorized", clip=-1)
    model = mlp()
    x, y = batches(1, B=10)[0]
    with pytest.raises(ValueError, match="divisible by 3"):
        make_gradient_transform("m3").backward(model, x, y)
    with pytest.raises(ValueError, match="c < B/2"):
        make_gradient_transform("winsorized", clip=5).backward(model, x, y)
    with pytest.raises(ValueError, match="cannot load"):
        make_gradient_transform("ra3").load_state_dict(make_gradient_transform("rm3").state_dict())


# ------------------------------------------------------------------ small exact cases -------
def test_winsorized_mean_of_a_hand_made_batch():
    """Five values per coordinate, worked out by hand: c=1 clips the smallest to the 2nd
    smallest and the largest to the 2nd largest; the pair (0, 2) clips only from above."""
    g = torch.tensor([[10.0, 1.0], [-7.0, 2.0], [1.0, 3.0], [2.0, 4.0], [3.0, 100.0]])
    # column 0 sorted: -7 1 2 3 10 -> c=1: 1 1 2 3 3 = 10/5; (0, 2): -7 1 2 2 2 = 0/5
    # column 1 sorted: 1 2 3 4 100 -> c=1: 2 2 3 4 4 = 15/5; (0, 2): 1 2 3 3 3 = 12/5
    assert torch.equal(winsorized_mean(g, 1), torch.tensor([2.0, 3.0]))
    assert torch.equal(winsorized_mean(g, (0, 2)), torch.tensor([0.0, 2.4]))
    # [2, 0]: the two smallest up to the 3rd smallest: 10 2 2 2 3 = 19/5; 3 3 3 4 100 = 113/5
    assert torch.equal(winsorized_mean(g, [2, 0]), torch.tensor([3.8, 22.6]))
    # (1, 0): -7 -> 1 and 1 -> 2: 10 1 1 2 3 = 17/5, 2 2 3 4 100 = 111/5; (0, 1): 10 -> 3, 100 -> 4
    assert torch.equal(winsorized_mean(g, (1, 0)), torch.tensor([3.4, 22.2]))
    assert torch.equal(winsorized_mean(g, (0, 1)), torch.tensor([0.4, 2.8]))
    d, a = g[:, :1].clone(), torch.ones(5, 1)  # the same rows in outer form
    assert torch.equal(winsorized_outer_mean(d, a, (0, 2)), torch.tensor([[0.0]]))
    assert torch.equal(winsorized_outer_mean(d, a, (1, 0)), torch.tensor([[3.4]]))
    assert torch.equal(winsorized_outer_mean(d, a, (0, 1)), torch.tensor([[0.4]]))


def test_winsorized_outer_mean_c0_is_the_plain_mean():
    delta, act = ints(7, 3, seed=11), ints(7, 4, seed=12)
    full = delta[:, :, None] * act[:, None, :]
    assert torch.equal(winsorized_outer_mean(delta, act, 0), full.mean(0))  # integer sums: exact
    assert torch.equal(winsorized_outer_mean(delta, act, (0, 0)), full.mean(0))


def test_clip_levels_are_checked_at_their_bounds():
    g = ints(6, 3, seed=5)
    assert winsorized_mean(g, 2).shape == (3,) and winsorized_mean(g, (0, 5)).shape == (3,)
    for bad in (3, (0, 6), (3, 3), (1, 2, 0), (1,), (True, 0), (0, -1), (1.0, 1)):
        with pytest.raises(ValueError, match="winsorization level"):
            winsorized_mean(g, bad)
    with pytest.raises(ValueError, match="batch size B=0$"):
        winsorized_mean(torch.tensor(1.0), 0)  # a scalar has no batch
    assert robust.clip_counts(2, 5) == (2, 2)
    with pytest.raises(ValueError, match="winsorization level"):
        robust.clip_counts(3, 6)  # 3 + 3 >= 6
    with pytest.raises(ValueError, match=r"one of \('order_statistic', 'percentile'\), got 'quantile'"):
        robust.clip_counts(1, 6, "quantile")


def test_percentile_level_and_batch_are_checked_at_their_bounds():
    assert robust.percentile_counts(0, 1) == (0, 0) and robust.percentile_counts(50, 3) == (1, 1)
    for c in (-1, 51, 2.0, True):
        with pytest.raises(ValueError, match="0 <= c <= 50"):
            robust.percentile_counts(c, 100)
    with pytest.raises(ValueError, match="needs a batch"):
        robust.percentile_counts(2, 0)


# ------------------------------------------------------------------ compile switch ----------
def test_compile_switch_values_and_devices():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # a device object needs no card
    robust.set_compile(True)
    assert robust._compile_mode == "1" and robust._want_compile(cpu) and robust._want_compile(cuda)
    robust.set_compile(False)
    assert robust._compile_mode == "0" and not robust._want_compile(cpu)
    robust.set_compile("auto")
    assert robust._want_compile(cpu) and not robust._want_compile(cuda)
    robust.set_compile("AUTO")
    assert robust._want_compile(cpu)
    robust.set_compile("yes")
    with pytest.raises(ValueError, match="CGLIB_COMPILE"):
        robust._want_compile(cpu)


@pytest.fixture
def fake_compile(monkeypatch):
    """torch.compile replaced by a recorder: the compile logic without compiling anything."""
    made = []

    def compile(fn, dynamic=None):
        made.append(fn)
        assert dynamic is True  # one graph for every size (batch, layer widths)

        def run(*args):
            run.calls += 1
            return fn(*args)
        run.calls = 0
        return run
    monkeypatch.setattr(torch, "compile", compile)
    monkeypatch.setattr(robust, "_compiled", {})
    return made


def test_run_compiles_each_function_once_and_only_when_asked(fake_compile):
    def double(x):
        return 2 * x
    robust.set_compile("1")
    assert robust._run(double, False, 3) == 6 and fake_compile == []
    assert robust._run(double, True, 3) == 6 and robust._run(double, True, 4) == 8
    assert fake_compile == [double] and robust._compiled[double].calls == 2
    assert not robust._compile_failed


def test_a_failing_compile_warns_once_and_falls_back_to_eager(monkeypatch):
    tries = []

    def broken(fn, dynamic=None):
        tries.append(fn)
        raise RuntimeError("no compiler")
    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(robust, "_compiled", {})
    robust.set_compile("1")
    with pytest.warns(RuntimeWarning, match="no compiler") as caught:
        assert robust._run(abs, True, -3) == 3
    assert [w.filename for w in caught] == [__file__]  # reported at _run's caller
    assert robust._compile_failed and not robust._want_compile(torch.device("cpu"))
    assert robust._run(abs, True, -4) == 4 and len(tries) == 1  # not tried again
    robust.set_compile("1")  # resets the failure
    assert not robust._compile_failed


def test_medians_compile_only_when_the_switch_says_so(fake_compile):
    a, b, c = ([torch.tensor([float(v)])] for v in (1, 3, 2))
    robust.set_compile("0")
    assert torch.equal(robust._medians_(a, [b[0].clone()], c)[0], torch.tensor([2.0]))
    assert fake_compile == []
    robust.set_compile("1")
    assert robust._compile_medians(b)  # a one-tensor model
    assert torch.equal(robust._medians_(a, [b[0].clone()], c)[0], torch.tensor([2.0]))
    assert fake_compile == [robust._medians_into]


def test_eager_medians_use_the_given_scratch():
    a, b, c = [torch.tensor([1.0, 5.0])], [torch.tensor([3.0, 2.0])], [torch.tensor([2.0, 9.0])]
    scratch = [torch.zeros(2)]
    out = robust._medians_(a, b, c, scratch)
    assert out is b and torch.equal(b[0], torch.tensor([2.0, 5.0]))
    assert torch.equal(scratch[0], torch.tensor([3.0, 5.0]))  # max(a, b) went there, not to a new tensor


# ------------------------------------------------------------------ transform edge cases ----
def test_winsorized_without_clipping_is_plain_backward_even_with_batchnorm_in_train_mode():
    """c = 0, and the percentile reading at B = 20, c = 2 (no value clipped), take the plain
    gradient: no per-example gradients, so BatchNorm may use batch statistics."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4)).train()
    [(x, y)] = batches(1, B=20)
    want = mean_grads(model, x, y)
    for clip, reading in [(0, "order_statistic"), (2, "percentile")]:
        loss = make_gradient_transform("winsorized", clip, reading=reading).backward(model, x, y)
        torch.testing.assert_close(loss, F.cross_entropy(model(x), y), **TIGHT)
        for p, g in zip(model.parameters(), want):
            torch.testing.assert_close(p.grad, g, **TIGHT)


def test_m3_needs_a_batch_divisible_by_3():
    model = mlp()
    for B in (8, 10):  # 8: divisible by 2 and 4, not by 3
        x, y = batches(1, B=B)[0]
        with pytest.raises(ValueError, match="divisible by 3"):
            make_gradient_transform("m3").backward(model, x, y)
    x, y = batches(1, B=9)[0]  # 9: divisible by 3 only
    loss = make_gradient_transform("m3").backward(model, x, y)
    groups = [mean_grads(model, xs, ys) for xs, ys in zip(x.chunk(3), y.chunk(3))]
    torch.testing.assert_close(loss, torch.stack([F.cross_entropy(model(xs), ys) for xs, ys in
                                                  zip(x.chunk(3), y.chunk(3))]).mean(), **TIGHT)
    for p, gs in zip(model.parameters(), zip(*groups)):
        torch.testing.assert_close(p.grad, torch.stack(gs).median(0).values, **TIGHT)


def test_winsorized_clip_must_be_a_non_negative_integer():
    for bad in (True, 1.0, -1, "2"):
        with pytest.raises(ValueError, match="integer clip"):
            make_gradient_transform("winsorized", bad)
    assert make_gradient_transform("winsorized", 0).state_dict() == {
        "name": "winsorized", "clip": 0, "reading": "order_statistic"}
    with pytest.raises(ValueError, match="reading"):
        make_gradient_transform("winsorized", 1, reading="quantile")
    with pytest.raises(ValueError, match="warm-up"):
        make_gradient_transform("ra3", warmup="none")


def test_rm3_keeps_one_scratch_buffer_per_parameter_across_steps():
    """Eagerly the max(h1, h2) of every step goes into the same persistent buffers."""
    model, t = mlp(), make_gradient_transform("rm3", warmup="partial")
    seen = []
    for x, y in batches(4):
        t.backward(model, x, y)
        seen.append(dict(t._scratch))
    assert seen[0] == {} and seen[1] == {}  # steps 0 and 1 take no median
    names = [n for n, _ in model.named_parameters()]
    assert list(seen[2]) == names and all(seen[3][n] is seen[2][n] for n in names)


def test_rolling_state_is_checked_against_the_model():
    model = mlp()
    t = make_gradient_transform("ra3")
    for x, y in batches(2):
        t.backward(model, x, y)
    state = t.state_dict()
    assert state["steps"] == 2 and len(state["history"]) == 2
    too_long = {**state, "history": state["history"] + state["history"][:1]}
    with pytest.raises(ValueError, match="more than two"):
        make_gradient_transform("ra3").load_state_dict(too_long)
    x, y = batches(1, seed=1)[0]
    h0 = state["history"][0]
    wrong = {**h0, "0.weight": torch.zeros(3)}
    missing = {n: g for n, g in h0.items() if n != "0.weight"}
    for h in (wrong, missing):
        t2 = make_gradient_transform("ra3")
        t2.load_state_dict({**state, "history": [h, state["history"][1]]})
        with pytest.raises(ValueError, match="does not match the model at parameter '0.weight'"):
            t2.backward(model, x, y)


def test_winsorized_means_without_clipping_are_torch_mean_and_matmul():
    """c = 0 takes no streaming pass: exactly g.mean(0) and delta^T act / B (the streamed sum
    in float64 rounds differently)."""
    gen = torch.Generator().manual_seed(8)
    g, d, a = (torch.randn(13, n, generator=gen) for n in (200, 20, 10))
    for c in (0, (0, 0)):
        dense, outer = robust.winsorized_means([("dense", (g,)), ("outer", (d, a))], c)
        assert torch.equal(dense, g.mean(0)) and torch.equal(outer, d.t() @ a / 13)


def test_a_fresh_import_has_not_given_up_compiling():
    """The module's state at import (loaded afresh from its file, apart from the one in use)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("robust_fresh", robust.__file__)
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)
    assert fresh._compile_failed is False and fresh._compiled == {}
    assert fresh._compile_mode == os.environ.get("CGLIB_COMPILE", "auto")


def test_transform_state_dicts_hold_what_was_built():
    assert make_gradient_transform("sgd").state_dict() == {"name": "sgd", "clip": 0}
    assert make_gradient_transform("m3").state_dict() == {"name": "m3", "clip": 0}
    assert make_gradient_transform("rm3").state_dict() == {
        "name": "rm3", "clip": 0, "steps": 0, "warmup": "reference", "history": []}
    assert make_gradient_transform("ra3", warmup="partial").state_dict() == {
        "name": "ra3", "clip": 0, "steps": 0, "warmup": "partial", "history": []}


class WithUnused(nn.Module):
    """An MLP with a parameter the forward never uses."""

    def __init__(self):
        super().__init__()
        self.net = mlp()
        self.spare = nn.Parameter(torch.ones(3))

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("name", ["sgd", "m3"])
def test_backward_sets_fresh_gradients_and_handles_unused_parameters(name):
    model = WithUnused()
    [(x, y)] = batches(1)
    t = make_gradient_transform(name)
    t.backward(model, x, y)
    first = [p.grad.clone() for p in model.net.parameters()]
    t.backward(model, x, y)  # p.grad is set again, never accumulated
    for p, g in zip(model.net.parameters(), first):
        assert torch.equal(p.grad, g)
    if name == "m3":  # the median of three zero group gradients
        assert torch.equal(model.spare.grad, torch.zeros(3))
    else:  # loss.backward() leaves it None, so optimizers skip it
        assert model.spare.grad is None
        for p, g in zip(model.net.parameters(), mean_grads(model.net, x, y)):
            torch.testing.assert_close(p.grad, g, **TIGHT)


def test_rolling_scratch_follows_the_shape_dtype_and_device_of_the_gradient():
    t = make_gradient_transform("rm3")
    s = t._scratch_for("w", torch.zeros(2))
    assert t._scratch_for("w", torch.ones(2)) is s
    for like in (torch.zeros(3), torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64, device="meta")):
        s = t._scratch_for("w", like)
        assert (s.shape, s.dtype, s.device) == (like.shape, like.dtype, like.device)
