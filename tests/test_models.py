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


def test_resnet18_keeps_32x32_resolution():
    net = build_model({"name": "resnet18", "hidden": []}, (3, 32, 32), 10)
    assert net.conv1.stride == (1, 1) and isinstance(net.maxpool, torch.nn.Identity)
    net.eval()
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    gray = build_model({"name": "resnet18", "hidden": []}, (1, 28, 28), 10).eval()
    assert gray(torch.randn(2, 1, 28, 28)).shape == (2, 10)


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
