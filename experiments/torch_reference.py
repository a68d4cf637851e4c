"""The official Barlow Twins training step in plain PyTorch, for side-by-side timing.

  python experiments/torch_reference.py --preset cifar-r18 --steps 10

What facebookresearch/barlowtwins' main.py does per step, written out here (torchvision is
not needed; its ResNet layout is reproduced): a torchvision-layout ResNet (ImageNet stem:
7x7/2 conv + max-pool; CIFAR stem: 3x3/1 conv, no pool), the projector Linear-BN-ReLU
blocks ending in a bias-free Linear, the loss sum_i (1 - C_ii)^2 + lambda sum_{i!=j} C_ij^2
on C = BN(z_a)^T BN(z_b) / N (BatchNorm1d without affine), and LARS as the official code has it:
biases and BatchNorm parameters get neither weight decay nor the trust ratio; the others
get g + wd * w, scaled by eta * |w| / |g + wd * w|, into momentum 0.9. One process, the
given number of threads. torch is an optional dependency of experiments/ only.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch
from torch import nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = _downsample(cin, width, stride)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + _shortcut(self.downsample, x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        out = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)   # stride on the 3x3
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = _downsample(cin, out, stride)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        return torch.relu(self.bn3(self.conv3(y)) + _shortcut(self.downsample, x))


def _downsample(cin: int, cout: int, stride: int):
    """torchvision's downsample: 1x1 strided conv + BN where the shape changes, else None."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


def _shortcut(downsample, x):
    return x if downsample is None else downsample(x)


LAYOUTS = {"resnet18": (BasicBlock, (2, 2, 2, 2)), "resnet34": (BasicBlock, (3, 4, 6, 3)),
           "resnet50": (Bottleneck, (3, 4, 6, 3))}


class ResNet(nn.Module):
    """torchvision's ResNet without the classifier, with torchvision's module names (conv1,
    bn1, layer1.0.conv1, layer2.0.downsample.0, ...): [B, 3, S, S] -> [B, F] pooled
    features. stem "cifar": a 3x3/1 conv1 and no max-pool; "cifar_pool": the same with a
    2x2/2 max-pool."""

    def __init__(self, name: str = "resnet50", stem: str = "imagenet", width: float = 1.0):
        super().__init__()
        block, depths = LAYOUTS[name]
        base = max(1, int(round(64 * width)))
        k, stride = (7, 2) if stem == "imagenet" else (3, 1)
        self.conv1 = nn.Conv2d(3, base, k, stride, k // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.maxpool = {"imagenet": nn.MaxPool2d(3, 2, 1), "cifar": nn.Identity(),
                        "cifar_pool": nn.MaxPool2d(2, 2)}[stem]
        cin = base
        for stage, depth in enumerate(depths):
            w, blocks = base * 2 ** stage, []
            for i in range(depth):
                blocks.append(block(cin, w, 2 if (i == 0 and stage > 0) else 1))
                cin = w * block.expansion
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        self.num_features = cin

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        for stage in range(1, 5):
            x = getattr(self, f"layer{stage}")(x)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


def projector(in_dim: int, dims: tuple) -> nn.Sequential:
    """Linear-BN-ReLU for every width but the last, then a bias-free Linear (official code)."""
    layers, cin = [], in_dim
    for d in dims[:-1]:
        layers += [nn.Linear(cin, d, bias=False), nn.BatchNorm1d(d), nn.ReLU()]
        cin = d
    layers.append(nn.Linear(cin, dims[-1], bias=False))
    return nn.Sequential(*layers)


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.0051) -> torch.Tensor:
    """[N, D], [N, D] -> scalar: each feature standardised over the batch (BatchNorm1d
    without affine, training mode: biased variance, eps 1e-5), C = z1^T z2 / N."""
    def standardise(z):
        return nn.functional.batch_norm(z, None, None, training=True, eps=1e-5)

    c = standardise(z1).T @ standardise(z2) / z1.shape[0]
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag


class BarlowTwins(nn.Module):
    def __init__(self, backbone: str, stem: str, width: float, dims: tuple,
                 lambd: float = 0.0051):
        super().__init__()
        self.backbone = ResNet(backbone, stem, width)
        self.projector = projector(self.backbone.num_features, dims)
        self.lambd = lambd

    def forward(self, y1, y2):
        return barlow_twins_loss(self.projector(self.backbone(y1)),
                                 self.projector(self.backbone(y2)), self.lambd)


class LARS(torch.optim.Optimizer):
    """LARS with momentum; parameters with one dimension (biases, BatchNorm) are excluded
    from weight decay and from the trust ratio."""

    def __init__(self, params, lr: float, weight_decay: float = 1.5e-6, momentum: float = 0.9,
                 eta: float = 0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      eta=eta))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:
                    update = update.add(p, alpha=group["weight_decay"])
                    w_norm, u_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(update)
                    trust = torch.where((w_norm > 0) & (u_norm > 0),
                                        group["eta"] * w_norm / u_norm, torch.ones_like(w_norm))
                    update = update * trust
                state = self.state[p]
                if "momentum" not in state:
                    state["momentum"] = torch.zeros_like(p)
                buf = state["momentum"]
                buf.mul_(group["momentum"]).add_(update)
                p.add_(buf, alpha=-group["lr"])


def torchvision_resnet50(dims: tuple, lambd: float = 0.0051) -> nn.Module:
    """torchvision's own resnet50 (zero_init_residual, as the official code builds it; the
    classifier replaced by the identity) with this file's projector and loss. Raises
    ImportError where torchvision does not import."""
    from torchvision.models import resnet50  # pylint: disable=import-outside-toplevel
    model = BarlowTwins("resnet50", "imagenet", 1.0, tuple(dims), lambd)
    backbone = resnet50(zero_init_residual=True)
    backbone.fc = nn.Identity()
    model.backbone = backbone
    return model


def benchmark_step(*, backbone: str, stem: str, width: float, image_size: int,
                   projector: tuple, batch: int, steps: int, warmup: int,
                   threads: int, device: str = "cpu", amp_bf16: bool = False,
                   use_torchvision: bool = False) -> dict:
    """Median seconds of one training step (forward of both views, backward, LARS) on
    random inputs, after `warmup` untimed steps; channels_last throughout.

    device: "cpu" or "cuda" (each step synchronised). amp_bf16: the forward under
    torch.autocast(bfloat16), the loss in float32. use_torchvision: torchvision's
    resnet50 (`torchvision_resnet50`) instead of this file's layout copy.
    """
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    if use_torchvision:
        model = torchvision_resnet50(tuple(projector))
    else:
        model = BarlowTwins(backbone, stem, width, tuple(projector))
    model = model.to(device=device, memory_format=torch.channels_last)
    opt = LARS(model.parameters(), lr=0.2 * batch / 256)
    y1, y2 = (torch.randn(batch, 3, image_size, image_size, device=device).to(
        memory_format=torch.channels_last) for _ in range(2))
    cuda = device.startswith("cuda")

    def step():
        opt.zero_grad(set_to_none=True)
        if amp_bf16:
            with torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16):
                z1 = model.projector(model.backbone(y1))
                z2 = model.projector(model.backbone(y2))
            loss = barlow_twins_loss(z1.float(), z2.float(), model.lambd)
        else:
            loss = model(y1, y2)
        loss.backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize()   # the whole step, the optimiser's kernels too
        return float(loss.detach())

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup + 1):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    out = {"seconds": statistics.median(times), "torch_version": torch.__version__,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if cuda:
        out["peak_device_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--stem", default="cifar")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--projector", default="2048,2048,2048")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = p.parse_args()
    r = benchmark_step(backbone=a.backbone, stem=a.stem, width=a.width, image_size=a.image_size,
                       projector=tuple(int(v) for v in a.projector.split(",")), batch=a.batch,
                       steps=a.steps, warmup=a.warmup, threads=a.threads)
    print(f"PyTorch {r['torch_version']}: {a.batch / r['seconds']:.1f} pairs/s "
          f"({r['seconds'] * 1e3:.1f} ms per step, {a.threads} threads)")


if __name__ == "__main__":
    main()
