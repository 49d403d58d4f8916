"""Convolutional networks: BatchNorm CNNs and ResNets under the schedules vision uses."""

from __future__ import annotations

import torch
from torch import nn

from ..realistic import Setup
from . import schedules
from .data import images, one_outlier_batch
from .models import PlainDeepCNN, SmallCNN, TinyResNet
from .recipe import Recipe, healthy, loss_falls, one_lone_spike

STEPS = 600
FAMILY = "CNN"
_cross_entropy = nn.functional.cross_entropy


def batchnorm_sgd_warm_restarts() -> Setup:
    """SGDR (torch's CosineAnnealingWarmRestarts, T_0 250, eta_min 0): at each restart the
    lr jumps back to its peak from 1/25,000 of it."""
    torch.manual_seed(200)
    model = SmallCNN()
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9,
                                        weight_decay=5e-4),
                 images(), loss_fn=_cross_entropy, schedule=schedules.warm_restarts(250))


def batchnorm_sgd_cosine_weight_decay() -> Setup:
    torch.manual_seed(201)
    model = SmallCNN()
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9,
                                        weight_decay=5e-4, nesterov=True),
                 images(seed=4), loss_fn=_cross_entropy,
                 schedule=schedules.warmup_cosine(30, STEPS))


def batchnorm_noisy_small_batches() -> Setup:
    """Batches of 8 very noisy images: single batches several times the median loss are
    ordinary here (a log-loss robust sigma of ~0.1-0.2)."""
    torch.manual_seed(202)
    model = SmallCNN()
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9),
                 images(batch=8, noise=2.0, seed=5), loss_fn=_cross_entropy)


def resnet_sgd_one_cycle() -> Setup:
    torch.manual_seed(203)
    model = TinyResNet()
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9,
                                        weight_decay=5e-4),
                 images(seed=6), loss_fn=_cross_entropy, schedule=schedules.one_cycle(STEPS))


def resnet_adamw_bf16() -> Setup:
    torch.manual_seed(204)
    model = TinyResNet()
    return Setup(model, torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05),
                 images(seed=7), loss_fn=_cross_entropy,
                 schedule=schedules.warmup_cosine(50, STEPS), precision="bf16")


def batchnorm_fp16_grad_scaler() -> Setup:
    """fp16 with torch's GradScaler (init scale 2^16): it backs off while it calibrates,
    skipping its first steps by design."""
    torch.manual_seed(205)
    model = SmallCNN()
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                 images(seed=8), loss_fn=_cross_entropy, precision="fp16")


def relu_cnn_default_init_adam_warmup() -> Setup:
    """Six plain ReLU convolutions, PyTorch's default init, no normalisation."""
    torch.manual_seed(206)
    model = PlainDeepCNN(depth=6, activation=nn.ReLU)
    return Setup(model, torch.optim.Adam(model.parameters(), lr=2e-3), images(seed=9),
                 loss_fn=_cross_entropy, schedule=schedules.linear_warmup(50))


#: The step of cnn_bn_one_outlier_batch's outlier batch.
OUTLIER_STEP = 400


def batchnorm_one_outlier_batch() -> Setup:
    """Issue 27's case 4: a tight loss (batches of 128 heavily overlapping images: the loss
    levels off near 0.44 with a log-loss robust sigma of ~0.15) and ONE batch whose inputs
    are buried in noise (sd 8 on top of the data's 3): its loss is ~3.6x the median, 8 robust
    sigmas above it, its gradient norm under 2x its median, and the next step is back at
    the median. One hard batch, not an instability: no warning."""
    torch.manual_seed(207)
    model = SmallCNN()
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9),
                 one_outlier_batch(images(batch=128, noise=3.0, seed=10), OUTLIER_STEP, 8.0),
                 loss_fn=_cross_entropy)


RECIPES: tuple[Recipe, ...] = (
    healthy("cnn_bn_sgd_warm_restarts", FAMILY, batchnorm_sgd_warm_restarts, loss_falls(2)),
    healthy("cnn_bn_sgd_nesterov_cosine_wd", FAMILY, batchnorm_sgd_cosine_weight_decay,
            loss_falls(2)),
    healthy("cnn_bn_noisy_batches_of_8", FAMILY, batchnorm_noisy_small_batches,
            loss_falls(1.3), ci=True),
    healthy("resnet_sgd_one_cycle_wd", "ResNet", resnet_sgd_one_cycle, loss_falls(2)),
    healthy("resnet_adamw_bf16_cosine", "ResNet", resnet_adamw_bf16, loss_falls(2)),
    healthy("cnn_bn_fp16_grad_scaler", FAMILY, batchnorm_fp16_grad_scaler, loss_falls(2),
            ci=True),
    healthy("cnn_bn_one_outlier_batch", FAMILY, batchnorm_one_outlier_batch,
            one_lone_spike(OUTLIER_STEP, loss_falls(2)), ci=True),
    healthy("cnn_relu_default_init_adam_warmup", FAMILY, relu_cnn_default_init_adam_warmup,
            loss_falls(2)),
)
