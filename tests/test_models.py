import torch

from cglib.models import build_model, mlp, pick_device


def test_mlp_shape_and_xavier_init():
    torch.manual_seed(0)
    net = mlp((1, 28, 28), [512], 10)
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 512), (512, 10)]
    bound = (6 / (784 + 512)) ** 0.5  # xavier_uniform
    w = linears[0].weight
    assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
    assert torch.all(linears[0].bias == 0)
    assert net(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_mlp_depth():
    net = build_model({"name": "mlp", "hidden": [256, 256, 256]}, (784,), 10)
    assert sum(isinstance(m, torch.nn.Linear) for m in net) == 4


def test_device_auto_is_cpu_here_or_cuda():
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu").type == "cpu"


def test_cnn_blocks_batchnorm_and_pooling():
    net = build_model({"name": "cnn", "channels": [16, 32]}, (1, 28, 28), 10)
    convs = [m for m in net if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.bias) for c in convs] == [(1, 16, None), (16, 32, None)]
    assert [m.num_features for m in net if isinstance(m, torch.nn.BatchNorm2d)] == [16, 32]
    assert net(torch.randn(5, 1, 28, 28)).shape == (5, 10)
    assert sum(p.numel() for p in net.parameters()) == 16 * 9 + 2 * 16 + 32 * 16 * 9 + 2 * 32 + 32 * 10 + 10
    import pytest
    with pytest.raises(ValueError, match="image inputs"):
        build_model({"name": "cnn", "channels": [4]}, (10,), 3)


def test_cnn_without_pooling_flattens_the_last_feature_map_into_the_head():
    net = build_model({"name": "cnn", "channels": [8, 16], "pool": "none"}, (1, 28, 28), 10)
    assert not any(isinstance(m, torch.nn.AdaptiveAvgPool2d) for m in net)
    assert net[-1].in_features == 16 * 7 * 7 and net(torch.randn(5, 1, 28, 28)).shape == (5, 10)
    avg = build_model({"name": "cnn", "channels": [8, 16], "pool": "avg"}, (1, 28, 28), 10)
    assert avg[-1].in_features == 16 and isinstance(avg[-3], torch.nn.AdaptiveAvgPool2d)


def test_mlp_layers_in_order():
    net = mlp((2, 3), [4, 5], 3)
    assert [type(m).__name__ for m in net] == ["Flatten", "Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert [(m.in_features, m.out_features) for m in net if isinstance(m, torch.nn.Linear)] == [(6, 4), (4, 5), (5, 3)]
    assert all(torch.all(m.bias == 0) for m in net if isinstance(m, torch.nn.Linear))
    assert [type(m).__name__ for m in mlp((3,), [], 2)] == ["Flatten", "Linear"]


def test_cnn_head_of_odd_sizes_and_refused_shapes():
    import pytest
    net = build_model({"name": "cnn", "channels": [2, 3], "pool": "none"}, (1, 10, 10), 4)  # 10 → 5 → 2
    assert net[-1].in_features == 3 * 2 * 2 and net(torch.randn(2, 1, 10, 10)).shape == (2, 4)
    assert [type(m).__name__ for m in net][:4] == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"]
    conv = net[0]
    assert (conv.kernel_size, conv.padding, conv.bias, net[3].kernel_size) == ((3, 3), (1, 1), None, 2)
    default = build_model({"name": "cnn", "channels": [2]}, (1, 6, 6), 4)
    assert isinstance(default[-3], torch.nn.AdaptiveAvgPool2d) and default[-1].in_features == 2
    for name in ("cnn", "resnet18"):
        with pytest.raises(ValueError, match=f"{name} needs image inputs"):
            build_model({"name": name, "channels": [2]}, (1, 6, 6, 6), 4)
    with pytest.raises(ValueError, match="unknown model 'vit'"):
        build_model({"name": "vit"}, (1, 6, 6), 4)


def test_pick_device_on_cuda_asks_gpu_for_the_card(monkeypatch):
    """cpu is the CPU even with CUDA; cuda:N is card N if the job sees it (N < count), claimed
    through cglib.gpu and made the current card."""
    import pytest
    from cglib import gpu

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.append(("set", i)))
    monkeypatch.setattr(gpu, "before_cuda", lambda: calls.append(("before",)))
    monkeypatch.setattr(gpu, "card_for_process", lambda count, want, log: calls.append(("claim", count, want)) or
                        (1 if want is None else want))
    assert pick_device("cpu") == torch.device("cpu") and calls == []
    assert pick_device("cuda:1") == torch.device("cuda", 1)
    assert calls == [("before",), ("claim", 2, 1), ("set", 1)]
    calls.clear()
    assert pick_device("auto") == torch.device("cuda", 1) and calls == [("before",), ("claim", 2, None), ("set", 1)]
    assert pick_device("cuda:0") == torch.device("cuda", 0)
    for device in ("cuda:2", "cuda:3"):
        with pytest.raises(RuntimeError, match=f"train.device is {device} but this job sees 2 CUDA device"):
            pick_device(device)
    calls.clear()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    for device in ("cuda", "cuda:0"):
        with pytest.raises(RuntimeError, match=f"train.device is {device} but no CUDA device is available"):
            pick_device(device)
    assert calls == []


def test_logits_chunked_in_eval_mode_and_the_flag_restored():
    from cglib.models import logits

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.sizes, self.modes = [], []

        def forward(self, x):
            self.sizes.append(len(x))
            self.modes.append(self.training)
            return x * 2

    net = Net()
    x = torch.arange(10.0).reshape(5, 2).requires_grad_()
    out = logits(net, x, chunk=2)
    assert torch.equal(out, x.detach() * 2) and not out.requires_grad
    assert net.sizes == [2, 2, 1] and net.modes == [False] * 3 and net.training
    net.eval()
    logits(net, x)
    assert net.sizes[3:] == [5] and not net.training


def test_resnet18_keeps_32x32_resolution():
    net = build_model({"name": "resnet18", "hidden": []}, (3, 32, 32), 10)
    assert net.conv1.stride == (1, 1) and isinstance(net.maxpool, torch.nn.Identity)
    c = net.conv1
    assert (c.in_channels, c.out_channels, c.kernel_size, c.padding, c.bias) == (3, 64, (3, 3), (1, 1), None)
    net.eval()
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    gray = build_model({"name": "resnet18", "hidden": []}, (1, 28, 28), 10).eval()
    assert gray(torch.randn(2, 1, 28, 28)).shape == (2, 10)
