"""The scenarios of the realistic alert suite: tiny models trained the way people train them.

HEALTHY: none may raise a warning or critical alert. UNSTABLE: name -> (setup, the alerts
any one of which catches it, the alerts it must not raise).
"""

from __future__ import annotations

import torch
from torch import nn

from .detect_fixtures import mlp
from .realistic import STEPS, Setup
from .recipes.data import classification as _classification
from .recipes.data import images as _images
from .recipes.data import regression as _regression
from .recipes.data import tokens as _tokens
from .recipes.models import SmallCNN, TinyLM
from .recipes.schedules import warmup_cosine


# ------------------------------------------------------------------ healthy

def mlp_warmup_cosine() -> Setup:
    torch.manual_seed(10)
    model = mlp([16, 64, 64, 1], nn.ReLU)
    return Setup(model, torch.optim.AdamW(model.parameters(), lr=3e-3), _regression(),
                 schedule=warmup_cosine(50, STEPS))


def tiny_lm_hf_init() -> Setup:
    torch.manual_seed(11)
    model = TinyLM()
    return Setup(model, torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01),
                 _tokens(), loss_fn=nn.functional.cross_entropy,
                 schedule=warmup_cosine(50, STEPS), clip=1.0)


def cnn_batchnorm_sgd_step_decay() -> Setup:
    torch.manual_seed(12)
    model = SmallCNN()
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                 _images(), loss_fn=nn.functional.cross_entropy,
                 schedule=lambda step: 0.1 ** (step // 400))


def frozen_backbone_head() -> Setup:
    torch.manual_seed(13)
    model = mlp([16, 64, 64, 4], nn.ReLU)
    for layer in list(model)[:-1]:
        layer.requires_grad_(False)
    head = list(model)[-1]
    return Setup(model, torch.optim.Adam(head.parameters(), lr=1e-2), _classification(),
                 loss_fn=nn.functional.cross_entropy)


def default_init_fast_drop() -> Setup:
    """PyTorch's default init on a large-scale target: the loss falls > 10x in 100 steps."""
    torch.manual_seed(14)
    model = mlp([16, 64, 64, 1], nn.ReLU)
    return Setup(model, torch.optim.Adam(model.parameters(), lr=3e-3),
                 _regression(scale=10.0, noise=0.05))


def noisy_batch_size_4() -> Setup:
    torch.manual_seed(15)
    model = mlp([16, 32, 32, 4], nn.ReLU)
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.05),
                 _classification(batch=4), loss_fn=nn.functional.cross_entropy)


def clipping_always_engaged() -> Setup:
    torch.manual_seed(16)
    model = mlp([16, 64, 64, 1], nn.ReLU)
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.05),
                 _regression(scale=5.0), clip=0.1)


def fp16_mixed_precision() -> Setup:
    """fp16 autocast with a GradScaler on CPU: it skips its first steps while calibrating."""
    torch.manual_seed(17)
    model = mlp([16, 64, 64, 1], nn.ReLU)
    return Setup(model, torch.optim.SGD(model.parameters(), lr=1e-3), _regression(),
                 precision="fp16")


HEALTHY = {
    "mlp_warmup_cosine": mlp_warmup_cosine,
    "tiny_lm_hf_init": tiny_lm_hf_init,
    "cnn_batchnorm_sgd_step_decay": cnn_batchnorm_sgd_step_decay,
    "frozen_backbone_head": frozen_backbone_head,
    "default_init_fast_drop": default_init_fast_drop,
    "noisy_batch_size_4": noisy_batch_size_4,
    "clipping_always_engaged": clipping_always_engaged,
    "fp16_mixed_precision": fp16_mixed_precision,
}


# ------------------------------------------------------------------ unstable

def lr_x100_mid_run() -> Setup:
    torch.manual_seed(20)
    model = mlp([16, 64, 64, 1], nn.ReLU)
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.01), _regression(),
                 schedule=lambda step: 100.0 if step >= 500 else 1.0)


def lr_exponential() -> Setup:
    torch.manual_seed(21)
    model = mlp([16, 64, 64, 1], nn.ReLU)
    return Setup(model, torch.optim.SGD(model.parameters(), lr=1e-3), _regression(),
                 schedule=lambda step: 1.01 ** step)


def corrupted_batch() -> Setup:
    """One batch with targets x1e4 at step 500, clean data around it."""
    torch.manual_seed(22)
    model = mlp([16, 64, 64, 1], nn.ReLU)
    clean = _regression()

    def batches(step: int):
        x, y = clean(step)
        return (x, y * 1e4) if step == 500 else (x, y)
    return Setup(model, torch.optim.Adam(model.parameters(), lr=1e-3), batches)


def dead_relus() -> Setup:
    torch.manual_seed(23)
    model = mlp([16, 64, 64, 64, 1], nn.ReLU)
    for layer in list(model)[:-1]:
        if isinstance(layer, nn.Linear):
            nn.init.constant_(layer.bias, -5.0)
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.01), _regression())


def deep_sigmoid() -> Setup:
    torch.manual_seed(24)
    model = mlp([16] + [32] * 10 + [4], nn.Sigmoid)
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.1), _classification(),
                 loss_fn=nn.functional.cross_entropy)


def fp16_overflow() -> Setup:
    """fp16 autocast with a GradScaler on CPU; the inputs grow until activations overflow."""
    torch.manual_seed(25)
    model = mlp([16, 64, 64, 1], nn.ReLU)
    clean = _regression()

    def batches(step: int):
        x, y = clean(step)
        return x * (1.0 if step < 500 else 3e3), y
    return Setup(model, torch.optim.SGD(model.parameters(), lr=1e-3), batches,
                 precision="fp16")


#: name -> (setup, alerts any of which catches it, alerts it must not raise)
UNSTABLE = {
    "lr_x100_mid_run": (lr_x100_mid_run, {"LossDivergence", "GradientExplosion"}, set()),
    "lr_exponential": (lr_exponential, {"LossDivergence", "GradientExplosion"}, set()),
    # a spike, not a NaN alarm (Adam's moments then carry the damage: the loss stays ~10x
    # higher afterwards, a real divergence that LossDivergence reports)
    "corrupted_batch": (corrupted_batch, {"LossSpike"}, {"NonFiniteValues"}),
    "dead_relus": (dead_relus, {"DeadUnits"}, set()),
    "deep_sigmoid": (deep_sigmoid, {"GradientVanishing"}, set()),
    "fp16_overflow": (fp16_overflow, {"AmpOverflowStorm", "Fp16HeadroomLow"}, set()),
}


# ------------------------------------------------------------------ rule parity

def shallow_saturated_gate() -> Setup:
    """Two layers, the first a sigmoid gate biased fully open (bias +10, a gate-bias init
    taken too far): its derivative is ~5e-5, so its gradient is ~1e-5 of the head's. A
    depth profile of two layers has no depth for a gradient to vanish through:
    ActivationSaturation names it; GradientVanishing, in-process and by the rule, does not."""
    torch.manual_seed(30)
    model = mlp([16, 64, 4], nn.Sigmoid)
    nn.init.constant_(model[0].bias, 10.0)
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.1), _classification(),
                 loss_fn=nn.functional.cross_entropy)


#: Short runs that only the parity of the detectors and the rules judges (steps, setup):
#: each separates a condition one side once applied and the other did not.
PARITY = {
    "shallow_saturated_gate": (300, shallow_saturated_gate),
}
