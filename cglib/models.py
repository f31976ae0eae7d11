"""Networks of the papers: the CG fully connected net, a small BatchNorm CNN (MC's setting at
laptop scale) and a ResNet-18 for 32×32 inputs; the models a researcher brings (a torchvision
arch by name, a function by import path) are built by cglib.model_sources."""
from __future__ import annotations

import math

import torch
from torch import nn

from cglib import model_sources


def mlp(input_shape: tuple, hidden: list[int], num_classes: int) -> nn.Sequential:
    """Fully connected ReLU net with Xavier init and zero biases (CG §2.1: 784-2048-10)."""
    widths = [math.prod(input_shape), *hidden, num_classes]
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:])):
        linear = nn.Linear(w_in, w_out)
        nn.init.xavier_uniform_(linear.weight)
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def cnn(input_shape: tuple, channels: list[int], num_classes: int, pool: str = "avg") -> nn.Sequential:
    """Per block: 3×3 conv (no bias: BatchNorm's shift replaces it) → BatchNorm → ReLU → 2×2
    max-pool; then global average pooling (pool "avg") or the last feature map flattened (pool
    "none": a head with channels × H/2^k × W/2^k inputs, enough weights to memorise random labels)
    and one linear layer. MC §4 measures m-coherence on BatchNorm networks (ResNet-50); this
    keeps BatchNorm and convolutions at a size a CPU trains in minutes. Default PyTorch init, as
    torchvision's ResNets."""
    if len(input_shape) != 3:
        raise ValueError(f"cnn needs image inputs (C, H, W), got shape {input_shape}")
    layers: list[nn.Module] = []
    c_in, (h, w) = input_shape[0], input_shape[1:]
    for c_out in channels:
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                   nn.ReLU(), nn.MaxPool2d(2)]
        c_in, h, w = c_out, h // 2, w // 2
    if pool == "avg":
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)]
    else:
        layers += [nn.Flatten(), nn.Linear(c_in * h * w, num_classes)]
    return nn.Sequential(*layers)


def resnet18(input_shape: tuple, num_classes: int) -> nn.Module:
    """torchvision ResNet-18 adapted to small images: 3×3 stride-1 stem, no max-pool.

    The ImageNet stem (7×7 stride 2 + max-pool) would shrink a 32×32 image to 8×8 before the
    first block; the usual CIFAR adaptation keeps the resolution (W&S appendix B setup).
    """
    import torchvision  # lazy: MLP studies never pay for the import

    net = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    net.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


def build_model(model_params: dict, input_shape: tuple, num_classes: int) -> nn.Module:
    if model_params["name"] == "mlp":
        return mlp(input_shape, model_params["hidden"], num_classes)
    if model_params["name"] == "cnn":
        return cnn(input_shape, model_params["channels"], num_classes, model_params.get("pool", "avg"))
    if model_params["name"] == "resnet18":
        if len(input_shape) != 3:
            raise ValueError(f"resnet18 needs image inputs (C, H, W), got shape {input_shape}")
        return resnet18(input_shape, num_classes)
    if model_params["name"] in model_sources.SOURCES:
        return model_sources.build(model_params, input_shape, num_classes)
    raise ValueError(f"unknown model {model_params['name']!r}")


def pick_device(device: str = "auto", log=print) -> torch.device:
    """train.device → the device this process trains on. "auto" is CUDA when present, else the
    CPU. "cuda" is the first card no other job holds, and "cuda:N" is card N once it is free
    (cglib.gpu.claim: one lock per card, so concurrent jobs land on different cards). The result
    always has an index, and that card becomes the current one, so a bare "cuda" anywhere
    later (autocast, fork_rng) means this card."""
    from cglib import gpu

    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(f"train.device is {device} but no CUDA device is available (use auto or cpu)")
    count = torch.cuda.device_count()
    want = int(device.split(":")[1]) if ":" in device else None
    if want is not None and want >= count:
        raise RuntimeError(f"train.device is {device} but this job sees {count} CUDA device(s)")
    gpu.before_cuda()
    index = gpu.card_for_process(count, want, log)
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


@torch.no_grad()
def logits(model: nn.Module, x: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """Outputs on x in eval mode, chunked; the train/eval flag is restored. 512 rows keep a conv
    net's activations in cache: a small BatchNorm CNN evaluates 10,000 images 3× faster than
    with 8,192-row chunks, and an MLP is as fast (measured on one CPU thread)."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i:i + chunk]) for i in range(0, len(x), chunk)])
    model.train(was_training)
    return out
