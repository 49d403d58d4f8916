"""Lightning's gradient clipping by norm as the step's read of the gradients.

With ``Trainer(gradient_clip_val=...)`` (by norm), Lightning's precision plugin runs
``torch.nn.utils.clip_grad_norm_`` right after ``on_before_optimizer_step``. For one fit,
``NormClipRoute`` routes that call through ``Monitor.clip_grad_norm_`` (the same two torch
functions, so training is bit-identical), whose total norm is then the step's global gradient
norm and yields the norm after clipping: on unsampled steps gradwatch makes no pass over the
gradients of its own (``monitor/capture/clip_by_norm.py``). Only where Lightning's own clipping runs
unchanged: automatic optimization, ``configure_gradient_clipping`` not overridden, and a
precision plugin that clips as the base one does (not FSDP's or DeepSpeed's).
"""

from __future__ import annotations

from typing import Any

#: The plugins' methods that clip plainly (both Lightning packages name them alike).
PLAIN_CLIP_GRADIENTS = ("Precision.clip_gradients", "MixedPrecision.clip_gradients")
PLAIN_CLIP_BY_NORM = "Precision.clip_grad_by_norm"
PLAIN_CONFIGURE = "LightningModule.configure_gradient_clipping"


def clips_by_norm_plainly(trainer: Any, pl_module: Any) -> bool:
    """Whether this fit clips by norm through Lightning's own, unchanged path."""
    plugin = trainer.precision_plugin
    algorithm = trainer.gradient_clip_algorithm
    return (bool(trainer.gradient_clip_val) and trainer.gradient_clip_val > 0
            and (algorithm is None or str(getattr(algorithm, "value", algorithm)) == "norm")
            and bool(pl_module.automatic_optimization)
            and type(pl_module).configure_gradient_clipping.__qualname__ == PLAIN_CONFIGURE
            and type(plugin).clip_gradients.__qualname__ in PLAIN_CLIP_GRADIENTS
            and type(plugin).clip_grad_by_norm.__qualname__ == PLAIN_CLIP_BY_NORM)


class NormClipRoute:
    """Routes a fit's norm clipping through the monitor (``install``) and back (``remove``)."""

    def __init__(self) -> None:
        self.plugin: Any = None

    @property
    def active(self) -> bool:
        """The clip reads the gradients: ``on_before_optimizer_step`` leaves them to it."""
        return self.plugin is not None

    def install(self, trainer: Any, pl_module: Any, monitor: Any) -> None:
        if self.active or not clips_by_norm_plainly(trainer, pl_module):
            return
        plugin = trainer.precision_plugin

        def clip_grad_by_norm(optimizer: Any, clip_val: float) -> None:
            monitor.clip_grad_norm_(plugin.main_params(optimizer), clip_val, optimizer)

        plugin.clip_grad_by_norm = clip_grad_by_norm  # this instance only, until remove()
        self.plugin = plugin

    def remove(self) -> None:
        if self.plugin is not None:
            vars(self.plugin).pop("clip_grad_by_norm", None)
            self.plugin = None
