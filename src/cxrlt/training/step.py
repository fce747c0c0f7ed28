"""How a training step runs on its device: the profile's ``train`` keys that change speed, not what is learned.

A GPU spends most of a naive step waiting: fp32 matmuls instead of bf16 tensor cores, NCHW convolutions that are
transposed on every call, one kernel launch per elementwise op, one launch per parameter in the optimizer, and a
``loss.item()`` per step that stops the host until the GPU has drained. Each key removes one of these:

- ``amp``: bf16 autocast of the forward pass (CUDA only: a CPU without AMX runs bf16 slower than fp32);
- ``channels_last``: NHWC weights and inputs, the layout cuDNN's tensor-core convolutions use natively;
- ``compile``: ``torch.compile`` of the network (Inductor fuses the elementwise ops of the forward and backward);
- ``fused_optimizer``: AdamW's fused kernel (one launch for every parameter);
- ``log_every``: steps between host reads of the running loss (the loop keeps it on the device in between).

The numbers are the same function as the plain fp32 eager step within bf16's precision; ``tests/test_step.py``
checks each key against it on CPU, and ``bench/gpu/check.py`` measures what each buys.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

#: ``compile`` values: ``none`` (eager) or a ``torch.compile`` mode
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class StepOptions:
    """The step's speed settings as they apply on ``device`` (``amp`` is off on CPU whatever the profile says)."""

    device: torch.device
    amp: bool = False
    channels_last: bool = False
    compile: str = "none"
    fused_optimizer: bool = False
    log_every: int = 1

    def __post_init__(self):
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {COMPILE_MODES}; got {self.compile!r}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be at least 1; got {self.log_every}")

    @classmethod
    def from_settings(cls, settings: dict, device: torch.device) -> StepOptions:
        """From a member's ``train`` settings (``cxrlt.config.train_settings``)."""
        return cls(device=device, amp=bool(settings.get("amp", False)) and device.type == "cuda",
                   channels_last=bool(settings.get("channels_last", False)),
                   compile=str(settings.get("compile", "none")),
                   fused_optimizer=bool(settings.get("fused_optimizer", False)),
                   log_every=int(settings.get("log_every", 1)))

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def place(self, model: nn.Module) -> nn.Module:
        """Move ``model`` to the device in the step's memory format (in place; the EMA copy inherits it)."""
        return model.to(self.device, memory_format=self.memory_format)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """A batch of images on the device, in the step's memory format (asynchronous from pinned memory)."""
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=self.memory_format) if x.dim() == 4 else x

    def compiled(self, net: nn.Module) -> nn.Module:
        """``net`` (the model or its DDP wrapper) as the step calls it; the module itself, whose state dict the
        checkpoints and the EMA read, is unchanged."""
        if self.compile == "none":
            return net
        return torch.compile(net, mode=None if self.compile == "default" else self.compile)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def adamw(self, params, lr: float, weight_decay: float) -> torch.optim.AdamW:
        """AdamW, fused where the device has the kernel (CUDA and CPU), else the default multi-tensor one."""
        fused = self.fused_optimizer and self.device.type in ("cuda", "cpu")
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
