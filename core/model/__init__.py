"""The 4D transformer and everything it needs to run: config and presets, a backbone adapter over
``diffusers.WanTransformer3DModel``, the four stream modes, sync layers, codecs and text encoders.

Design note — what this package owns and what it does not:

* ``config.py``       typed ``FourDConfig`` (saved as ``fourd.json``) and named presets.
* ``attention.py``    token layouts, RoPE tables per layout, attention kernels (SDPA, dense mask,
                      FlexAttention block mask, exact split row ∪ column attention).
* ``blocks.py``       one Wan block applied to a layout (the block's math, written out once).
* ``sync.py``         soft and hard synchronization layers (σ-conditioned; start as the paper's
                      training-free formulas).
* ``reference.py``    reference frames of each cell: the (v, 0) and (0, t) reference inputs and
                      the reference of the residual flow.
* ``transformer.py``  ``FourDTransformer``: modes, conditioning, context flag; ``forward`` for
                      training, ``prepare`` + ``step`` for sampling.
* ``codec.py``        pixels and the Wan VAE (time-only compression).
* ``text.py``         word-level tokenizer + tiny UMT5, or Wan's umT5, behind ``TextEncoder``.
* ``pipeline.py``     ``FourDModel``: the whole folder, ``save_pretrained`` / ``from_pretrained``.

It does not own the sampling loop (``core/sampler.py``), the facade (``core/engine.py``),
training or data. Nothing here runs at import; diffusers and transformers load on first use.
"""

from __future__ import annotations

from .config import CONTEXT_DYNAMIC, CONTEXT_FREEZE, CONTEXT_GRID, MODES, PRESETS, FourDConfig, preset

__all__ = [
    "CONTEXT_DYNAMIC", "CONTEXT_FREEZE", "CONTEXT_GRID", "MODES", "PRESETS", "FourDConfig", "preset",
    "FourDModel", "FourDTransformer", "FourDLayers", "TextEncoder", "build_word_tokenizer",
    "tiny_umt5_config", "PixelCodec", "WanVAECodec", "model_hash",
]


def __getattr__(name: str):  # lazy: importing core.model does not import diffusers
    if name in ("FourDModel", "model_hash"):
        from . import pipeline

        return getattr(pipeline, name)
    if name in ("FourDTransformer", "FourDLayers"):
        from . import transformer

        return getattr(transformer, name)
    if name in ("TextEncoder", "build_word_tokenizer", "tiny_umt5_config"):
        from . import text

        return getattr(text, name)
    if name in ("PixelCodec", "WanVAECodec"):
        from . import codec

        return getattr(codec, name)
    raise AttributeError(name)
