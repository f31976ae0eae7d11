"""Per-example gradients: the fast path (closed forms per layer, cglib.layer_rules) and the
one-pass vmap fallback against plain torch.func vmap(grad(functional_call)) on every parameter."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cglib.pergrad as pergrad
from cglib.pergrad import (Outer, per_example_grads, per_example_grads_factored,
                           per_example_grads_reference)

TOL = dict(rtol=1e-5, atol=1e-5)


def batch(n_in, B=12, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (B, n_in) if isinstance(n_in, int) else (B, *n_in)
    return torch.randn(shape, generator=g), torch.randint(0, classes, (B,), generator=g)


def assert_matches_reference(model, x, y, **kw):
    fast = per_example_grads(model, x, y, **kw)
    ref = per_example_grads_reference(model, x, y)
    assert list(fast) == list(ref) == [n for n, p in model.named_parameters() if p.requires_grad]
    for name in ref:
        assert fast[name].shape == (x.shape[0], *dict(model.named_parameters())[name].shape)
        torch.testing.assert_close(fast[name], ref[name], **TOL, msg=name)
    return fast


def mlp():
    torch.manual_seed(0)
    # In-place ReLU right after a Linear: the tap must record the gradient of the Linear's
    # own output, not of the ReLU's.
    return nn.Sequential(nn.Linear(20, 16), nn.ReLU(inplace=True), nn.Linear(16, 16), nn.Tanh(),
                         nn.Linear(16, 5))


def small_cnn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(6 * 3 * 3, 8), nn.ReLU(), nn.Linear(8, 5))
    bn = model[1]
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.normal_()
    return model.eval()


def test_mlp_fast_path_matches_vmap():
    model = mlp()
    x, y = batch(20)
    assert_matches_reference(model, x, y)


def test_mlp_uses_factored_linear_path_and_leaves_grads_alone():
    model = mlp()
    x, y = batch(20)
    losses, grads = per_example_grads_factored(model, x, y)
    assert all(isinstance(grads[f"{i}.weight"], Outer) for i in (0, 2, 4))
    assert not any(m._forward_hooks for m in model.modules())  # the taps are removed
    torch.testing.assert_close(losses, F.cross_entropy(model(x), y, reduction="none"))
    assert all(p.grad is None for p in model.parameters())
    # Convention: gradients of loss_i (not loss_i / B), so their mean is the batch gradient.
    F.cross_entropy(model(x), y).backward()
    for name, p in model.named_parameters():
        g = grads[name].materialize() if isinstance(grads[name], Outer) else grads[name]
        torch.testing.assert_close(g.mean(0), p.grad, **TOL)


def vmap_passes(monkeypatch) -> list:
    """Records the names each vmap fallback pass computes."""
    passes, real = [], pergrad._vmap_grads

    def spy(model, x, y, names, chunk_size):
        passes.append(list(names))
        return real(model, x, y, names, chunk_size)
    monkeypatch.setattr(pergrad, "_vmap_grads", spy)
    return passes


@pytest.mark.parametrize("chunk_size", [None, 5])
def test_cnn_conv_batchnorm_eval_linear_in_one_fast_pass(chunk_size, monkeypatch):
    passes = vmap_passes(monkeypatch)
    model = small_cnn()
    x, y = batch((1, 8, 8), B=11)
    _, grads = per_example_grads_factored(model, x, y, chunk_size=chunk_size)
    assert isinstance(grads["7.weight"], Outer) and grads["0.weight"].shape == (11, 4, 1, 3, 3)
    assert passes == []  # conv and BatchNorm by their closed forms: no vmap
    assert_matches_reference(model, x, y, chunk_size=chunk_size)


@pytest.mark.parametrize("case", ["cnn", "batchnorm", "norms", "seq_norms", "resblock"])
@pytest.mark.parametrize("B", [1, 5])
def test_every_layer_rule_against_torch_func(case, B, monkeypatch):
    """Conv2d (padding, stride, dilation, groups, reflect), BatchNorm, GroupNorm, LayerNorm,
    InstanceNorm (instance and running statistics) and a ResNet block: per-example gradients by
    the closed forms alone, equal to torch.func's, at batch 1 too."""
    from test_coherence import CASES
    passes = vmap_passes(monkeypatch)
    torch.manual_seed(0)
    build, shape = CASES[case]
    model = build().eval()
    for m in model.modules():  # statistics and affine parameters away from their defaults
        if getattr(m, "running_mean", None) is not None:
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d,
                          nn.InstanceNorm1d)) and m.weight is not None:
            m.weight.data.uniform_(0.5, 1.5)
    x, y = batch(shape, B=B, classes=4)
    assert_matches_reference(model, x, y)
    assert passes == []


def test_one_vmap_pass_over_every_parameter_when_any_needs_it(monkeypatch):
    """A model with a parameter no rule covers (the Tokens model's custom Scale, a Linear
    called twice on sequences) runs the model once, in vmap, for every parameter."""
    from test_coherence import CASES
    passes = vmap_passes(monkeypatch)
    torch.manual_seed(0)
    build, shape = CASES["tokens"]
    model = build()
    x, y = batch(shape, B=4, classes=4)
    fast = assert_matches_reference(model, x, y)
    assert passes == [list(fast)]


class SequenceFirst(nn.Module):
    """A Linear called on (T, B, d): the sequence-first layout of torch's RNNs and attention."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):  # x: (B, T, 3)
        return self.head(self.lin(x.transpose(0, 1)).mean(0))


def test_a_call_without_the_batch_in_dim_0_falls_back_in_one_pass(monkeypatch):
    """Its closed form would read dim 0 as the examples. (At T = B the shapes cannot tell: like
    Opacus with batch_first, the fast path assumes the batch in dim 0; the module says so.)"""
    passes = vmap_passes(monkeypatch)
    torch.manual_seed(0)
    model = SequenceFirst()
    x, y = batch((5, 3), B=4, classes=3)
    assert_matches_reference(model, x, y)
    assert passes == [["lin.weight", "lin.bias", "head.weight", "head.bias"]]


def test_batchnorm_in_train_mode_is_rejected():
    model = small_cnn().train()
    x, y = batch((1, 8, 8), B=4)
    with pytest.raises(ValueError, match="BatchNorm"):
        per_example_grads(model, x, y)


class SeqModel(nn.Module):
    """A Linear applied twice, on (B, T, d) inputs, and a bare parameter on the root."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)
        self.scale = nn.Parameter(torch.randn(6))

    def forward(self, x):
        h = torch.relu(self.inner(x))
        h = self.inner(h) * self.scale
        return self.head(h.mean(1))


def test_linear_called_twice_on_sequences_and_root_parameter():
    torch.manual_seed(0)
    model = SeqModel()
    x, y = batch((4, 6), B=7, classes=3)
    _, grads = per_example_grads_factored(model, x, y)
    assert not isinstance(grads["inner.weight"], Outer)  # a sum of outer products
    assert_matches_reference(model, x, y)


class Tied(nn.Module):
    """Two Linear modules sharing one weight: the hooks alone would miss half the gradient."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(5, 5)
        self.b = nn.Linear(5, 5)
        self.b.weight = self.a.weight
        self.out = nn.Linear(5, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.b(torch.tanh(self.a(x)))))


def test_tied_linear_weights_fall_back_to_vmap(monkeypatch):
    passes = vmap_passes(monkeypatch)
    torch.manual_seed(0)
    model = Tied()
    x, y = batch(5, B=6, classes=3)
    _, grads = per_example_grads_factored(model, x, y)
    # the tied pair needs vmap, so every parameter comes from that one pass (registered once:
    # the shared weight appears under its first name)
    assert not any(isinstance(g, Outer) for g in grads.values())
    assert passes == [["a.weight", "a.bias", "b.bias", "out.weight", "out.bias"]]
    assert_matches_reference(model, x, y)


def test_frozen_parameters_are_skipped():
    model = mlp()
    model[0].weight.requires_grad_(False)
    model[4].requires_grad_(False)
    x, y = batch(20)
    fast = assert_matches_reference(model, x, y)
    assert set(fast) == {"0.bias", "2.weight", "2.bias"}


def test_a_bare_linear_as_the_model():
    """The root module itself a Linear: its parameters are named "weight" and "bias"."""
    torch.manual_seed(0)
    model = nn.Linear(7, 4)
    x, y = batch(7, classes=4)
    _, grads = per_example_grads_factored(model, x, y)
    assert list(grads) == ["weight", "bias"] and isinstance(grads["weight"], Outer)
    assert_matches_reference(model, x, y)


class Twice(nn.Module):
    """One Linear applied twice to (B, d) inputs: a sum of two outer products per example."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.lin(torch.tanh(self.lin(x)))))


def test_linear_called_twice_on_flat_inputs():
    torch.manual_seed(0)
    model = Twice()
    x, y = batch(5, B=6, classes=3)
    _, grads = per_example_grads_factored(model, x, y)
    assert not isinstance(grads["lin.weight"], Outer) and isinstance(grads["out.weight"], Outer)
    assert_matches_reference(model, x, y)


def test_linear_called_once_on_sequences():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 3), nn.Flatten(), nn.Linear(12, 3))
    x, y = batch((4, 6), B=7, classes=3)
    _, grads = per_example_grads_factored(model, x, y)
    assert not isinstance(grads["0.weight"], Outer) and isinstance(grads["2.weight"], Outer)
    assert_matches_reference(model, x, y)


class DropScale(nn.Module):
    """Dropout between a fast-path Linear and a root parameter (vmap path)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.drop = nn.Dropout(0.5)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 16))
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.drop(torch.relu(self.a(x))) * self.scale)


def test_losses_come_from_the_forward_pass_of_the_linear_gradients():
    """With dropout, the losses returned are those of the pass the gradients belong to (here the
    one vmap pass: the root parameter has no rule). The head's bias gradient of example i is
    softmax(z_i) - onehot(y_i), so loss_i = -log(1 + bias_grad[i, y_i])."""
    torch.manual_seed(0)
    model = DropScale().train()
    x, y = batch(8, B=16, classes=4)
    losses, grads = per_example_grads_factored(model, x, y)
    assert not isinstance(grads["scale"], Outer) and grads["scale"].shape == (16, 16)
    p_true = 1 + grads["head.bias"][torch.arange(16), y]
    torch.testing.assert_close(losses, -torch.log(p_true), **TOL)


def test_nothing_trainable_still_reports_the_losses():
    model = mlp().requires_grad_(False)
    x, y = batch(20)
    losses, grads = per_example_grads_factored(model, x, y)
    assert grads == {}
    torch.testing.assert_close(losses, F.cross_entropy(model(x), y, reduction="none"))


def test_batchnorm_without_running_stats_is_rejected_even_in_eval_mode():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, track_running_stats=False),
                          nn.Linear(4, 2)).eval()
    x, y = batch(4, B=5, classes=2)
    with pytest.raises(ValueError, match="BatchNorm '1'"):
        per_example_grads(model, x, y)


class Unused(nn.Module):
    """A Linear the forward never calls: its per-example gradients are zero."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Linear(3, 2)
        self.scale = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))

    def forward(self, x):
        return x * self.scale


def test_a_linear_the_forward_never_calls_gets_zero_gradients():
    model = Unused()
    x, y = batch(3, B=4, classes=3)
    fast = assert_matches_reference(model, x, y)
    assert not fast["unused.weight"].any() and not fast["unused.bias"].any()
    assert fast["scale"].any()


class ByKeyword(nn.Module):
    """A Linear called with its input by keyword: the forward hook sees no positional input."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(input=x)


def test_a_module_called_by_keyword_falls_back_in_one_pass(monkeypatch):
    passes = vmap_passes(monkeypatch)
    torch.manual_seed(0)
    model = ByKeyword()
    x, y = batch(4, B=5, classes=3)
    assert_matches_reference(model, x, y)
    assert passes == [["lin.weight", "lin.bias"]]


class NeverCalled(nn.Module):
    """The only parameters belong to a Linear the forward never calls: no tap is on the loss."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Linear(3, 3)

    def forward(self, x):
        return x * 2.0


def test_parameters_off_the_loss_path_get_zero_gradients_from_the_fast_path(monkeypatch):
    passes = vmap_passes(monkeypatch)
    model = NeverCalled()
    x, y = batch(3, B=4, classes=3)
    losses, grads = per_example_grads_factored(model, x, y)
    assert passes == [] and set(grads) == {"unused.weight", "unused.bias"}
    assert grads["unused.weight"].shape == (4, 3, 3) and not grads["unused.weight"].any()
    torch.testing.assert_close(losses, F.cross_entropy(2.0 * x, y, reduction="none"))


def test_parameters_off_the_loss_path_when_the_input_needs_a_gradient(monkeypatch):
    """An input that requires grad gives the loss a gradient although no tap is on it: the
    backward then reaches no tap, and the parameters still get zeros (not an autograd error)."""
    passes = vmap_passes(monkeypatch)
    x, y = batch(3, B=4, classes=3)
    losses, grads = per_example_grads_factored(NeverCalled(), x.requires_grad_(), y)
    assert passes == [] and not grads["unused.weight"].any() and not grads["unused.bias"].any()
    torch.testing.assert_close(losses, F.cross_entropy(2.0 * x.detach(), y, reduction="none"))


class SharedVector(nn.Module):
    """A Linear applied to a fixed vector of length B, not to the batch: its one-dimensional
    input must not be read as B examples of one feature."""

    def __init__(self, B):
        super().__init__()
        self.head = nn.Linear(4, 3)
        self.register_buffer("v", torch.randn(B))
        self.shift = nn.Linear(B, 3)

    def forward(self, x):
        return self.head(x) + self.shift(self.v)


def test_a_linear_on_a_one_dimensional_input_of_length_b_falls_back(monkeypatch):
    passes = vmap_passes(monkeypatch)
    torch.manual_seed(0)
    x, y = batch(4, B=5, classes=3)
    assert_matches_reference(SharedVector(5), x, y)
    assert len(passes) == 1


@pytest.mark.parametrize("arch,kwargs,shape", [
    ("squeezenet1_1", {}, (3, 32, 32)),  # Dropout, ceil-mode max-pools, concatenated Fire branches
    ("mobilenet_v3_small", {"width_mult": 0.25}, (1, 28, 28)),  # Hardswish, squeeze-excite, BatchNorm; one channel
])
@pytest.mark.parametrize("path", ["closed forms", "vmap fallback"])
def test_torchvision_archs_in_eval_mode_match_torch_func(arch, kwargs, shape, path, monkeypatch):
    """A model a researcher names (cglib.model_sources), in eval mode: the fast path, and the vmap
    fallback every parameter would take without a rule, both equal to plain torch.func."""
    from cglib.models import build_model
    passes = vmap_passes(monkeypatch)
    if path == "vmap fallback":
        monkeypatch.setattr(pergrad, "grad_rule", lambda mod: None)
    torch.manual_seed(0)
    model = build_model({"name": "torchvision", "arch": arch, "kwargs": kwargs}, shape, 5).eval()
    for m in model.modules():  # running statistics away from (0, 1), as after training
        if getattr(m, "running_mean", None) is not None:
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    x, y = batch(shape, B=3, classes=5)
    fast = assert_matches_reference(model, x, y)
    assert passes == ([] if path == "closed forms" else [list(fast)])
    assert len(fast) > 20 and all(g.abs().sum() > 0 for g in fast.values())  # every layer reached
