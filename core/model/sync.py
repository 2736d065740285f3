"""Synchronization layers of the parallel two-stream transformer (4Real-Video, Sec. 3, Fig. 2).

After block l the view stream holds ``yv`` and the time stream ``yt`` (aligned token by token in
grid order). A sync layer exchanges information between them; both kinds are conditioned on the
noise level σ through ``e(σ)`` (an embedding of the backbone's time embedding) and start as the
paper's training-free formulas (4Real-Video supplement, Sec. 1.2):

* hard:  ``x = Wv(σ)·yv + Wt(σ)·yt`` and both streams continue from x. Untrained,
  ``Wv = Wt = ½·I``: ``x = ½(yv + yt)`` (supplement Eq. 1).
* soft:  ``(Δv, Δt) = ModLinear(yv, yt; σ)``, ``xv = yv + Δv``, ``xt = yt + Δt``. Untrained,
  ``xv = (1−w_l)·yv + w_l·yt`` and ``xt = (1−w_l)·yt + w_l·yv`` with ``w_l = 0.1 + 0.4·l/L``
  (supplement Eq. 2; l = 0 … L−1).

Our linear maps are "diagonal + low rank": a per-channel weight (the training-free formula,
learnable, shifted by a zero-initialised σ-gate) plus a rank-r σ-modulated linear map of
``[yv, yt]`` whose output weights start at zero. The full 2D x 2D linear of the paper costs 8·D²
multiply-adds a token pair (about 15 % of a Wan-1.3B step); rank r costs 4·D·r.
"""

from __future__ import annotations

import torch
from torch import nn


def soft_sync_weight(layer: int, num_layers: int) -> float:
    """The training-free soft-sync weight ``w_l = 0.1 + 0.4·l/L`` (supplement Eq. 2)."""
    return 0.1 + 0.4 * layer / num_layers


class SyncLayer(nn.Module):
    """One sync layer (``kind`` "soft" or "hard") after block ``layer`` of ``num_layers``."""

    def __init__(self, kind: str, dim: int, cond_dim: int, rank: int, layer: int, num_layers: int):
        super().__init__()
        if kind not in ("soft", "hard"):
            raise ValueError(f"sync kind must be 'soft' or 'hard', got {kind!r}")
        self.kind, self.dim, self.rank = kind, dim, rank
        w0 = soft_sync_weight(layer, num_layers) if kind == "soft" else 0.5
        # Per-channel weights on (yv, yt): soft mixes the difference, hard averages.
        self.weight_v = nn.Parameter(torch.full((dim,), w0))
        self.weight_t = nn.Parameter(torch.full((dim,), w0))
        # σ-conditioning: per-channel gate offsets (2·D) and the low-rank scale/shift (2·r).
        self.modulation = nn.Linear(cond_dim, 2 * dim + 2 * rank)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)
        if rank:
            self.down_v = nn.Linear(dim, rank, bias=False)
            self.down_t = nn.Linear(dim, rank, bias=True)
            self.up = nn.Linear(rank, 2 * dim if kind == "soft" else dim)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def modulation_of(self, e: torch.Tensor) -> torch.Tensor:
        """``e(σ) [B, E]`` -> this layer's modulation ``[B, 2D + 2r]`` (computed once per step)."""
        return self.modulation(e)

    def apply_streams(self, x: torch.Tensor, B: int, V: int, T: int, P: int, mod: torch.Tensor) -> torch.Tensor:
        """The same merge on the model's two-stream tensor ``x [2B, M, D]`` (view stream in
        (t, v, p) order, then time stream in (v, t, p) order), written straight into a new
        two-stream tensor: no concatenation, no copy of the transposed view stream."""
        D, r = self.dim, self.rank
        yv = x[:B].view(B, T, V, P, D).transpose(1, 2)  # grid order view of the view stream
        yt = x[B:].view(B, V, T, P, D)
        # down_v on the view stream in its own (contiguous) order: the small result is transposed
        hv = self.down_v(x[:B]).view(B, T, V, P, r).transpose(1, 2) if r else None
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            # Training (out= writes record no gradients) and compiled code (dynamo graph-breaks
            # on a non-contiguous out=, which left the sync outside the compiled layer): the
            # functional form, one pointwise pass that inductor writes straight into both layouts.
            xv, xt = self._mix(yv, yt, mod, hv)
            return torch.cat([xv.transpose(1, 2).reshape(B, -1, D), xt.reshape(B, -1, D)])
        out = torch.empty_like(x)
        ov = out[:B].view(B, T, V, P, D).transpose(1, 2)
        ot = out[B:].view(B, V, T, P, D)
        shape = (B, 1, 1, 1, D)
        g_v = (self.weight_v + mod[:, :D]).view(shape).to(x.dtype)
        g_t = (self.weight_t + mod[:, D:2 * D]).view(shape).to(x.dtype)
        if self.kind == "soft":
            diff = yt - yv
            torch.addcmul(yv, g_v, diff, out=ov)
            torch.addcmul(yt, g_t, diff, value=-1, out=ot)
        else:
            torch.addcmul(g_t * yt, g_v, yv, out=ot)
            ov.copy_(ot)
        if r:
            scale, shift = mod[:, 2 * D:2 * D + r], mod[:, 2 * D + r:]
            h = hv + self.down_t(yt)
            h = torch.addcmul(shift.view(B, 1, 1, 1, r).to(h.dtype), h, 1 + scale.view(B, 1, 1, 1, r).to(h.dtype))
            up = self.up(h)
            if self.kind == "soft":
                ov.add_(up[..., :D])
                ot.add_(up[..., D:])
            else:
                ov.add_(up)
                ot.add_(up)
        return out

    def forward(self, yv: torch.Tensor, yt: torch.Tensor, mod: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``yv, yt [B, ..., D]`` aligned (same token order), ``mod [B, 2D + 2r]`` -> ``(xv, xt)``."""
        return self._mix(yv, yt, mod, self.down_v(yv) if self.rank else None)

    def _mix(self, yv, yt, mod, hv):
        """``forward`` with the low-rank view-stream projection ``hv = down_v(yv)`` given."""
        D, r = self.dim, self.rank
        shape = (mod.shape[0],) + (1,) * (yv.ndim - 2) + (-1,)
        g_v = (self.weight_v + mod[:, :D]).view(shape).float()
        g_t = (self.weight_t + mod[:, D:2 * D]).view(shape).float()
        yv32, yt32 = yv.float(), yt.float()
        if self.kind == "soft":
            diff = yt32 - yv32
            xv, xt = yv32 + g_v * diff, yt32 - g_t * diff
        else:
            xv = xt = g_v * yv32 + g_t * yt32
        if r:
            scale, shift = mod[:, 2 * D:2 * D + r].view(shape), mod[:, 2 * D + r:].view(shape)
            h = hv + self.down_t(yt)
            h = h * (1 + scale.to(h.dtype)) + shift.to(h.dtype)
            up = self.up(h).float()
            if self.kind == "soft":
                xv, xt = xv + up[..., :D], xt + up[..., D:]
            else:
                xv = xt = xv + up
        return xv.type_as(yv), xt.type_as(yt)
