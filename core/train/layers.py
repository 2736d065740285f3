"""The per-layer function the transformer runs while it trains.

The engine's parallel layer writes the sync layer's result in place (``SyncLayer.apply_streams``,
``out=`` kernels: fast for sampling, but autograd cannot go through it). Training runs the same
block and the same sync math through ``SyncLayer.forward`` instead, which autograd can
differentiate; a test holds the two equal. ``set_training_layers`` installs it (compiled or not)
on a ``FourDTransformer``; ``FourDTransformer.uncompile`` puts the engine's own back.
"""

from __future__ import annotations

import torch

from ..model.blocks import Layout, run_block


def sync_streams(sync_layer, x: torch.Tensor, layout: Layout, mod: torch.Tensor) -> torch.Tensor:
    """Sync layer over the two-stream tensor ``x [2B, M, D]`` (view stream in (t, v, p) order,
    then time stream in (v, t, p) order), differentiably; returns the same layout."""
    B, V, T, P = layout.B, layout.V, layout.T, layout.P
    M, D = x.shape[1], x.shape[2]
    yv = x[:B].view(B, T, V, P, D).transpose(1, 2)  # grid order, [B, V, T, P, D]
    yt = x[B:].view(B, V, T, P, D)
    xv, xt = sync_layer(yv, yt, mod)
    return torch.cat([xv.transpose(1, 2).reshape(B, M, D), xt.reshape(B, M, D)])


def parallel_layer(blk, sync_layer, x, tproj2, kv_k, kv_v, sync_mod, layout: Layout, ropes):
    """One parallel layer for training: block ``l`` on both streams (one batch), then sync ``l``."""
    x = run_block(blk, x, tproj2, kv_k, kv_v, layout, ropes)
    if sync_layer is None:
        return x
    return sync_streams(sync_layer, x, layout, sync_mod)


def set_training_layers(transformer, compile: bool = False) -> None:
    """Make ``transformer`` run its layers through autograd-safe functions, compiled or not."""
    if compile:
        transformer._block_fn = torch.compile(run_block, dynamic=False)
        transformer._layer_fn = torch.compile(parallel_layer, dynamic=False)
    else:
        transformer._block_fn = run_block
        transformer._layer_fn = parallel_layer
