"""The training forward traces as one graph: nothing in it reads a number back from the device
(each such read is a graph break of the compiled step, and a pause for the GPU)."""

from __future__ import annotations

import pytest
import torch

from core.model.testing import grid_inputs, tiny_transformer


@pytest.mark.parametrize("flags", [
    {},
    {"residual": True, "reference_inputs": True, "anchor_input": True, "warp_input": True},  # the default's inputs
], ids=["plain", "default-inputs"])
def test_the_training_forward_has_no_graph_breaks(flags):
    torch._dynamo.reset()
    model = tiny_transformer(2, **flags).train()
    x, sigma, text, cond, known = grid_inputs(2, 2, 3, 3, 16, 16, text_len=8, seed=2)
    V, T, h, w = 2, 3, 16, 16
    kwargs = dict(cond=cond, known=known, mode="soft", context=torch.zeros(2, dtype=torch.long),
                  output="x0" if flags.get("residual") else "velocity")
    if flags.get("warp_input"):
        kwargs["flows"] = torch.zeros(2, V + T, h, w, 2)
    eager = model(x, sigma, text, **kwargs)
    explained = torch._dynamo.explain(model)(x, sigma, text, **kwargs)
    reasons = [str(b.reason).splitlines()[0] for b in explained.break_reasons]
    assert explained.graph_break_count == 0, reasons
    assert explained.graph_count == 1
    assert torch.isfinite(eager).all()
