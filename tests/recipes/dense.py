"""Multilayer perceptrons across optimizers, schedules, regularisers and precisions."""

from __future__ import annotations

import io

import torch
from torch import nn

from ..detect_fixtures import mlp
from ..realistic import Setup
from . import schedules
from .data import classification, regression
from .recipe import Recipe, healthy, loss_falls

STEPS = 600
LONG = 2000
FAMILY = "MLP"


def sgd_momentum_constant() -> Setup:
    torch.manual_seed(100)
    model = mlp([16, 64, 64, 1], nn.ReLU)
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
                 regression())


def adam_step_decay() -> Setup:
    torch.manual_seed(101)
    model = mlp([16, 64, 64, 1], nn.Tanh)
    return Setup(model, torch.optim.Adam(model.parameters(), lr=3e-3), regression(seed=4),
                 schedule=schedules.step_decay(200, 0.3))


def adamw_warmup_cosine_weight_decay() -> Setup:
    torch.manual_seed(102)
    model = mlp([16, 64, 64, 1], nn.GELU)
    return Setup(model, torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1),
                 regression(seed=5), schedule=schedules.warmup_cosine(60, STEPS))


class DropoutClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Dropout(0.2),
                                 nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.2),
                                 nn.Linear(64, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def dropout_label_smoothing_one_cycle() -> Setup:
    torch.manual_seed(103)
    model = DropoutClassifier()
    return Setup(model, torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01),
                 classification(), schedule=schedules.one_cycle(STEPS),
                 loss_fn=nn.CrossEntropyLoss(label_smoothing=0.1))


class LayerNormMLP(nn.Module):
    def __init__(self, width: int = 64, depth: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(16, width)]
        for _ in range(depth - 1):
            layers += [nn.LayerNorm(width), nn.GELU(), nn.Linear(width, width)]
        self.net = nn.Sequential(*layers, nn.LayerNorm(width), nn.GELU(), nn.Linear(width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def layernorm_adafactor_warmup_stable_decay() -> Setup:
    torch.manual_seed(104)
    model = LayerNormMLP()
    return Setup(model, torch.optim.Adafactor(model.parameters(), lr=1e-2),
                 regression(seed=6), schedule=schedules.warmup_stable_decay(60, STEPS))


def sgd_weight_decay_step_decay() -> Setup:
    """SGD with weight decay whose lr falls 10x twice: late in training the gradient norm
    rises toward ||w|| sqrt(2 wd / lr) as the shrinking steps stop balancing the decay."""
    torch.manual_seed(105)
    model = mlp([16, 64, 64, 4], nn.ReLU)
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9,
                                        weight_decay=5e-4),
                 classification(batch=16), loss_fn=nn.functional.cross_entropy,
                 schedule=schedules.step_decay(250, 0.1))


def sgd_weight_decay_long_cosine() -> Setup:
    """2,000 steps of SGD with weight decay and a cosine to 0 (the CIFAR recipe's shape):
    as the lr decays the gradient norm rises toward ||w|| sqrt(2 wd / lr_t), by design."""
    torch.manual_seed(111)
    model = mlp([16, 64, 64, 4], nn.ReLU)
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9,
                                        weight_decay=5e-4),
                 classification(batch=16, seed=22), loss_fn=nn.functional.cross_entropy,
                 schedule=schedules.warmup_cosine(50, LONG))


def deep_tanh_xavier_clipped() -> Setup:
    """Eight tanh layers with Xavier init (the gain of tanh) and clipping at 1."""
    torch.manual_seed(106)
    model = mlp([16] + [48] * 8 + [1], nn.Tanh)
    for layer in model:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight, gain=nn.init.calculate_gain("tanh"))
            nn.init.zeros_(layer.bias)
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9),
                 regression(seed=7), clip=1.0)


def adam_fp16_grad_scaler() -> Setup:
    torch.manual_seed(107)
    model = mlp([16, 64, 64, 4], nn.ReLU)
    return Setup(model, torch.optim.Adam(model.parameters(), lr=1e-3), classification(),
                 loss_fn=nn.functional.cross_entropy, precision="fp16")


def adamw_bf16_linear_warmup() -> Setup:
    torch.manual_seed(108)
    model = mlp([16, 64, 64, 1], nn.SiLU)
    return Setup(model, torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05),
                 regression(seed=8), schedule=schedules.linear_warmup(100), precision="bf16")


def _pretrained_state() -> bytes:
    """A backbone trained on one task and saved as people save models (torch.save of the
    state dict), before any monitor exists."""
    torch.manual_seed(109)
    model = mlp([16, 64, 64, 4], nn.ReLU)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    batches = classification(seed=20)
    for step in range(300):
        x, y = batches(step)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def fine_tune_saved_model() -> Setup:
    """Load a saved model, replace its head for a new task, fine-tune everything with a low
    lr for the backbone and a higher one for the new head."""
    model = mlp([16, 64, 64, 4], nn.ReLU)
    model.load_state_dict(torch.load(io.BytesIO(_pretrained_state())))
    torch.manual_seed(110)
    model[-1] = nn.Linear(64, 4)
    backbone = [p for layer in list(model)[:-1] for p in layer.parameters()]
    optimizer = torch.optim.AdamW([{"params": backbone, "lr": 1e-4},
                                   {"params": model[-1].parameters(), "lr": 3e-3}],
                                  weight_decay=0.01)
    return Setup(model, optimizer, classification(seed=21), loss_fn=nn.functional.cross_entropy,
                 schedule=schedules.warmup_cosine(30, STEPS))


RECIPES: tuple[Recipe, ...] = (
    healthy("mlp_sgd_momentum_constant", FAMILY, sgd_momentum_constant, loss_falls(3)),
    healthy("mlp_tanh_adam_step_decay", FAMILY, adam_step_decay, loss_falls(3)),
    healthy("mlp_adamw_warmup_cosine_wd", FAMILY, adamw_warmup_cosine_weight_decay,
            loss_falls(3), ci=True),
    healthy("mlp_dropout_label_smoothing_one_cycle", FAMILY, dropout_label_smoothing_one_cycle,
            loss_falls(1.5)),
    healthy("mlp_layernorm_adafactor_wsd", FAMILY, layernorm_adafactor_warmup_stable_decay,
            loss_falls(3), ci=True),
    healthy("mlp_sgd_wd_step_decay", FAMILY, sgd_weight_decay_step_decay, loss_falls(2)),
    healthy("mlp_sgd_wd_cosine_2000_steps", FAMILY, sgd_weight_decay_long_cosine,
            loss_falls(2), steps=LONG),
    healthy("mlp_deep_tanh_xavier_clipped", FAMILY, deep_tanh_xavier_clipped, loss_falls(2)),
    healthy("mlp_adam_fp16_grad_scaler", FAMILY, adam_fp16_grad_scaler, loss_falls(2)),
    healthy("mlp_adamw_bf16_linear_warmup", FAMILY, adamw_bf16_linear_warmup, loss_falls(3)),
    healthy("mlp_fine_tune_saved_model", "fine-tuning", fine_tune_saved_model, loss_falls(2)),
)
