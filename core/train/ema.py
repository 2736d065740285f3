"""Exponential moving average of a model's weights, kept in fp32 beside the trained weights.

The EMA weights are what a checkpoint saves and what the learning curve scores: with a few
thousand steps of noisy small batches they are markedly better than the raw weights.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class EMA:
    """``shadow = decay·shadow + (1−decay)·param`` after each step, with the usual warm-up
    ``decay_n = min(decay, (1 + n) / (10 + n))`` so early averages are not stuck at the init."""

    def __init__(self, model: nn.Module, decay: float = 0.999):
        self.decay = decay
        self.updates = 0
        self.shadow = {k: p.detach().float().clone() for k, p in model.named_parameters()}

    def start_warm(self) -> None:
        """Take the current shadow as an average already past its warm-up: the next update uses
        the full ``decay`` (for weights that are themselves an EMA, e.g. a resumed model folder)."""
        self.updates = max(self.updates, math.ceil((10 * self.decay - 1) / (1 - self.decay)))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        params = dict(model.named_parameters())
        keys = list(self.shadow)
        shadow = [self.shadow[k] for k in keys]
        cur = [params[k].detach().float() for k in keys]
        torch._foreach_lerp_(shadow, cur, 1 - d)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights into ``model`` (its dtype kept)."""
        for k, p in model.named_parameters():
            p.copy_(self.shadow[k].to(p.dtype))

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.updates = state["updates"]
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)
