"""The 4D transformer: a diffusers ``WanTransformer3DModel`` run over a V x T grid of frames in one
of four stream modes, plus the new layers that make it a 4D model (sync, conditioning, context).

Modes (DESIGN.md, "The engine"; 4Real-Video Sec. 3 and supplement Sec. 1.2; 4Real-Video-V2):

* ``soft`` / ``hard`` — parallel: the view stream (T sequences of V·P tokens) and the time stream
  (V sequences of T·P tokens) go through every pretrained block side by side (one batch), then a
  sync layer (``sync.py``) merges them; after the last block the streams are averaged before the
  output head.
* ``sequential`` — one stream; each block attends across views, then across times (4Real-Video
  Eq. 5; the ablation baseline).
* ``fused`` — one stream over the whole grid; a token attends to its own frame ∪ own time ∪ own
  view, i.e. its row ∪ its column (4Real-Video-V2), density (V+T−1)/(V·T).

Conditioning: known cells enter as extra input channels (clean latents x mask, and the mask),
through a zero-initialised patch embedding whose output adds to the backbone's — the same as
widening Wan's patch embedding with zero columns, as its image-to-video model does. Known cells
of the noisy input are replaced by their clean values. A per-sample context flag (grid, dynamic
row, freeze-time column) adds a zero-initialised embedding to the time embedding.

Objective (rectified flow): ``x_σ = (1−σ)·x0 + σ·ε``; the model predicts the velocity ``ε − x0``
(what ``FlowMatchEulerDiscreteScheduler`` integrates); the backbone's timestep is ``1000·σ``.
Train with the loss on unknown cells only.

Two optional inductive biases (flags of ``FourDLayers``, saved with it; ``reference.py``):
``reference_inputs`` adds, through one more zero-initialised patch embedding, the clean frames of
(v, 0) and (0, t) to every cell (v, t), with their masks; ``anchor_input`` appends the frame of
(0, 0) and its mask as more (zero-initialised) input channels of that embedding, computed as a
second convolution over those channels alone so that a model widened into it
(``FourDLayers.with_anchor_input``) gives bit-identical outputs until its new weights train. ``residual`` runs the flow on
``r = x − ref`` (ref: the known (v, 0), else the first known cell, else 0): the noise starts at
``ref + ε``, the backbone sees ``x_σ − ref`` and its head predicts the clean residual ``r0``
(x-prediction), turned into the velocity ``(x_σ − ref − r0)/σ``. The caller's contract is
unchanged (x-space in, x-space velocity out) except that sampling starts from ``ref + ε``
(``flow_reference``); a zero head returns ``ref`` exactly (a fresh residual model zeroes it).
``warp_input`` (pixel models) adds, through its own zero-initialised patch embedding, the frames
of (0, t) and (0, 0) carried into view v by the optical flow between the freeze-time frames, the
frame of (v, 0) moved by view 0's motion since time 0, and their valid mask (``warp.py``); a model given it later (``FourDLayers.with_warp_input``) computes
exactly what it did until the new weights train.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from . import attention as A
from .blocks import (FOLD_ALIGN, Layout, fold_pays, fold_text_kv, note_qk_kernel_device, padding_rows, run_block,
                     text_fold_enabled, text_kv)
from .config import MODES, NUM_CONTEXTS, FourDConfig
from .sync import SyncLayer

try:  # diffusers is a runtime dependency; imported here so a bare `import core` stays light
    from diffusers import ModelMixin, WanTransformer3DModel
    from diffusers.configuration_utils import ConfigMixin, register_to_config
except ImportError:  # pragma: no cover
    raise


class FourDLayers(ModelMixin, ConfigMixin):
    """The parameters we add to a Wan backbone; saved in their own folder (``fourd_layers/``).

    All start as the identity or the training-free formula: cond embedding and context embedding
    are zero, soft sync is the weighted average, hard sync is ½·I.
    """

    @register_to_config
    def __init__(self, dim: int, num_layers: int, in_channels: int, mask_channels: int = 1,
                 patch_size: tuple = (1, 2, 2), sync_rank: int = 16, sync_embed_dim: int = 64,
                 num_contexts: int = NUM_CONTEXTS, reference_inputs: bool = False, residual: bool = False,
                 anchor_input: bool = False, warp_input: bool = False):
        super().__init__()
        if anchor_input and not reference_inputs:
            raise ValueError("anchor_input adds channels to the reference embedding: it needs reference_inputs")
        if warp_input and in_channels != 3:
            raise ValueError(f"warp_input needs a pixel-space model (3 input channels), got {in_channels}")
        patch = tuple(patch_size)
        self.cond_embedding = nn.Conv3d(in_channels + mask_channels, dim, kernel_size=patch, stride=patch)
        nn.init.zeros_(self.cond_embedding.weight)
        nn.init.zeros_(self.cond_embedding.bias)
        if reference_inputs:  # frames of (v, 0) and (0, t) [and (0, 0)] with their masks (reference.py)
            groups = 3 if anchor_input else 2
            self.ref_embedding = nn.Conv3d(groups * (in_channels + mask_channels), dim, kernel_size=patch, stride=patch)
            nn.init.zeros_(self.ref_embedding.weight)
            nn.init.zeros_(self.ref_embedding.bias)
        if warp_input:  # (0, t), (0, 0) carried into view v, (v, 0) moved, the valid mask (warp.py)
            self.warp_embedding = nn.Conv3d(3 * in_channels + 1, dim, kernel_size=patch, stride=patch)
            nn.init.zeros_(self.warp_embedding.weight)
            nn.init.zeros_(self.warp_embedding.bias)
        self.context_embedding = nn.Embedding(num_contexts, dim)
        nn.init.zeros_(self.context_embedding.weight)
        self.sync_embed = nn.Sequential(nn.SiLU(), nn.Linear(dim, sync_embed_dim), nn.SiLU())
        self.soft_sync = nn.ModuleList(
            [SyncLayer("soft", dim, sync_embed_dim, sync_rank, l, num_layers) for l in range(num_layers)])
        self.hard_sync = nn.ModuleList(
            [SyncLayer("hard", dim, sync_embed_dim, sync_rank, l, num_layers) for l in range(num_layers)])

    def with_anchor_input(self) -> "FourDLayers":
        """A copy with the anchor input: the same weights, ``ref_embedding``'s weight widened
        by zero columns for the (0, 0) frame and mask (bias unchanged), on the same device and
        dtype. A model with it gives bit-identical outputs until the new columns train."""
        cfg = {k: v for k, v in self.config.items() if not k.startswith("_")}
        if not cfg.get("reference_inputs"):
            raise ValueError("only a model with reference inputs can take the anchor input")
        if cfg.get("anchor_input"):
            return self
        p = self.ref_embedding.weight
        with torch.device(p.device):
            wide = FourDLayers(**{**cfg, "anchor_input": True}).to(p.dtype)
        state = self.state_dict()
        w = state["ref_embedding.weight"]  # [D, 2·(C + m), 1, ph, pw]
        state["ref_embedding.weight"] = torch.cat([w, w.new_zeros(w.shape[0], w.shape[1] // 2, *w.shape[2:])], dim=1)
        wide.load_state_dict(state)  # strict: everything else has the same shape
        return wide.train(self.training)

    def with_warp_input(self) -> "FourDLayers":
        """A copy with the warp input (``warp.py``): the same weights and a new, zero
        ``warp_embedding``, on the same device and dtype. A model with it gives bit-identical
        outputs until the new weights train."""
        cfg = {k: v for k, v in self.config.items() if not k.startswith("_")}
        if cfg.get("warp_input"):
            return self
        p = self.cond_embedding.weight
        with torch.device(p.device):
            wide = FourDLayers(**{**cfg, "warp_input": True}).to(p.dtype)
        missing, unexpected = wide.load_state_dict(self.state_dict(), strict=False)
        if unexpected or any(not k.startswith("warp_embedding.") for k in missing):
            raise ValueError(f"widening into the warp input: unexpected {unexpected}, missing {missing}")
        return wide.train(self.training)


@dataclass
class Plan:
    """Everything about one sample that does not change across denoising steps.

    Built by ``FourDTransformer.prepare``; ``step`` only adds the noisy grid and σ.
    """

    mode: str
    sync: bool
    B: int
    V: int
    T: int
    hp: int  # patches per frame, vertically
    wp: int  # and horizontally
    layout: Layout
    ropes: dict  # layout name -> (cos, sin)  [S, d/2]
    mask: object  # fused mode: dense bool [M, M] or a FlexAttention BlockMask; else None
    text: torch.Tensor  # [B, L, D] projected text states
    kv: list | None  # per block (k, v) [G·B, L, H, d] or folded (blocks.fold_text_kv), G streams; None = every step
    cond_tokens: torch.Tensor  # [B, V, T, P, D] zero-initialised condition embedding
    cond: torch.Tensor | None  # [B, V, T, C, h, w] clean latents of known cells
    known_cells: torch.Tensor | None  # [B, V, T] bool: all mask channels known
    context: torch.Tensor  # [B] long
    ref: torch.Tensor | None = None  # [B, V, T, C, h, w] residual flow reference; None = plain flow
    time_cache: dict = field(default_factory=dict)
    text_rows: tuple = (0, 1)  # (J, count) of the text states' padding (``blocks.padding_rows``)

    @property
    def P(self) -> int:
        return self.hp * self.wp


class FourDTransformer(nn.Module):
    """Backbone (``WanTransformer3DModel``) + new layers (``FourDLayers``); see the module doc.

    Training forward: ``model(noisy, sigma, text_states, cond, known, mode=..., context=...)``.
    Sampling: ``plan = model.prepare(...)`` once, then ``model.step(plan, noisy, sigma)`` per step.
    """

    backbone_timesteps = 1000.0  # Wan's timestep = σ · num_train_timesteps

    def __init__(self, backbone: WanTransformer3DModel, layers: FourDLayers, chunk_times: int = 8):
        super().__init__()
        cfg = backbone.config
        if cfg.image_dim is not None or cfg.added_kv_proj_dim is not None:
            raise ValueError("image-to-video Wan backbones are not supported; use a text-to-video one")
        if tuple(cfg.patch_size)[0] != 1:
            raise ValueError(f"the backbone must patch one frame at a time (patch_size[0] == 1), got {cfg.patch_size}")
        self.backbone = backbone
        self.layers = layers
        self.chunk_times = chunk_times  # time stride of fused RoPE positions
        # Switches the benchmark flips to show what each optimisation buys.
        self.batch_streams = True  # both streams' linear layers in one batch
        self.cache_text_kv = True  # text K/V once per sample, not per step
        self.cache_time = True  # timestep embeddings once per distinct σ
        # Q/K/V once where both streams hold the same tokens; None: on for CUDA half-precision
        # inference (exact up to rounding; the CPU and training keep the plain path)
        self.share_equal_streams: bool | None = None
        self._block_fn = run_block
        self._layer_fn = self._parallel_layer
        self._streams_fn = self._run_streams  # the whole block stack (compile_step compiles it)
        self._single_fn = self._run_single
        self._mark_cudagraph_steps = False

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: FourDConfig, mask_channels: int = 1) -> "FourDTransformer":
        backbone = WanTransformer3DModel(**cfg.backbone)
        layers = cls.new_layers_for(backbone, cfg, mask_channels)
        if layers.config.residual:  # a zero head predicts r0 = 0: the model starts at the reference
            nn.init.zeros_(backbone.proj_out.weight)
            nn.init.zeros_(backbone.proj_out.bias)
        return cls(backbone, layers, cfg.chunk_times)

    @staticmethod
    def new_layers_for(backbone, cfg: FourDConfig, mask_channels: int = 1) -> FourDLayers:
        bc = backbone.config
        return FourDLayers(
            dim=bc.num_attention_heads * bc.attention_head_dim, num_layers=bc.num_layers,
            in_channels=bc.in_channels, mask_channels=mask_channels, patch_size=tuple(bc.patch_size),
            sync_rank=cfg.sync_rank, sync_embed_dim=cfg.sync_embed_dim,
            reference_inputs=cfg.reference_inputs, residual=cfg.residual, anchor_input=cfg.anchor_input,
            warp_input=cfg.warp_input)

    @property
    def dim(self) -> int:
        return self.backbone.config.num_attention_heads * self.backbone.config.attention_head_dim

    @property
    def patch(self) -> tuple[int, int, int]:
        return tuple(self.backbone.config.patch_size)

    @property
    def num_layers(self) -> int:
        return len(self.backbone.blocks)

    @property
    def mask_channels(self) -> int:
        return self.layers.config.mask_channels

    @property
    def reference_inputs(self) -> bool:
        return bool(getattr(self.layers.config, "reference_inputs", False))

    @property
    def residual(self) -> bool:
        return bool(getattr(self.layers.config, "residual", False))

    @property
    def anchor_input(self) -> bool:
        return bool(getattr(self.layers.config, "anchor_input", False))

    @property
    def warp_input(self) -> bool:
        return bool(getattr(self.layers.config, "warp_input", False))

    def add_warp_input(self) -> bool:
        """Give the new layers the warp input (``FourDLayers.with_warp_input``); True if they
        changed (False: they had it). Build optimizers and EMA copies after this."""
        if self.warp_input:
            return False
        self.layers = self.layers.with_warp_input()
        return True

    def add_anchor_input(self) -> bool:
        """Widen the new layers into the anchor input (``FourDLayers.with_anchor_input``);
        True if they changed (False: they had it). Build optimizers and EMA copies after this."""
        if self.anchor_input:
            return False
        self.layers = self.layers.with_anchor_input()
        return True

    def grow_layers(self, num_layers: int) -> list[int]:
        """Deepen the model to ``num_layers`` blocks without changing what it computes: new blocks
        go in evenly between the trained ones (never first), each with its sub-layers' output
        projections zeroed (self-attention, cross-attention, FFN: the block is the identity),
        each followed by a soft sync of weight 0 (the identity) and a hard sync of ½·I (the
        identity on the equal streams that the previous hard sync left). Returns the new blocks'
        indices ([] if the model has ``num_layers`` already). Build optimizers and EMA copies
        after this; a shallower count is refused."""
        old = self.num_layers
        if num_layers == old:
            return []
        if num_layers < old:
            raise ValueError(f"a model can only grow: it has {old} blocks, asked for {num_layers}")
        extra = num_layers - old
        after = sorted(max(0, round((j + 1) * old / extra) - 1) for j in range(extra))  # old block each follows
        order: list[int | None] = []  # old block index, or None for a new block, in the new order
        for i in range(old):
            order.append(i)
            order.extend([None] * after.count(i))
        p = next(self.backbone.parameters())
        bcfg = {k: v for k, v in self.backbone.config.items() if not k.startswith("_")}
        lcfg = {k: v for k, v in self.layers.config.items() if not k.startswith("_")}
        with torch.device(p.device):
            backbone = WanTransformer3DModel(**{**bcfg, "num_layers": num_layers})
            layers = FourDLayers(**{**lcfg, "num_layers": num_layers})
        backbone.to(p.dtype)
        layers.to(next(self.layers.parameters()).dtype)
        keep = {k: v for k, v in self.backbone.state_dict().items() if not k.startswith("blocks.")}
        backbone.load_state_dict(keep, strict=False)
        lkeep = {k: v for k, v in self.layers.state_dict().items() if not k.startswith(("soft_sync.", "hard_sync."))}
        layers.load_state_dict(lkeep, strict=False)
        added = []
        with torch.no_grad():
            for new, src in enumerate(order):
                if src is not None:
                    backbone.blocks[new].load_state_dict(self.backbone.blocks[src].state_dict())
                    layers.soft_sync[new].load_state_dict(self.layers.soft_sync[src].state_dict())
                    layers.hard_sync[new].load_state_dict(self.layers.hard_sync[src].state_dict())
                    continue
                added.append(new)
                blk = backbone.blocks[new]
                for lin in (blk.attn1.to_out[0], blk.attn2.to_out[0], blk.ffn.net[-1]):
                    nn.init.zeros_(lin.weight)
                    nn.init.zeros_(lin.bias)
                layers.soft_sync[new].weight_v.zero_()
                layers.soft_sync[new].weight_t.zero_()
        # Wan keeps some modules in fp32 whatever the model's dtype: copy the old ones' dtypes
        def like(name: str) -> str:  # a new block's parameter takes the dtype of block 0's
            parts = name.split(".")
            return ".".join(["blocks", "0", *parts[2:]]) if parts[0] == "blocks" else name

        dtypes = {n: q.dtype for n, q in self.backbone.named_parameters()}
        for n, q in backbone.named_parameters():
            q.data = q.data.to(dtypes.get(like(n), q.dtype))
        self.backbone = backbone.train(self.backbone.training)
        self.layers = layers.train(self.layers.training)
        return added

    def flow_reference(self, cond: torch.Tensor, known: torch.Tensor) -> torch.Tensor | None:
        """Where the flow's noise is centred: ``ref [B, V, T, C, h, w]`` for a residual model
        (``x_1 = ref + ε``), None for a plain one. ``known``: ``[B, V, T]`` or ``[B, V, T, m]``."""
        if not self.residual:
            return None
        from .reference import flow_reference

        known_cells = known.to(torch.bool)
        if known_cells.ndim == 4:
            known_cells = known_cells.all(dim=-1)
        return flow_reference(cond, known_cells)

    def backbone_parameters(self):
        """Pretrained backbone parameters (frozen when real weights are fine-tuned)."""
        return [p for _, p in self.backbone.named_parameters()]

    def new_parameters(self):
        """Parameters of the new layers: sync, conditioning, context (always trained)."""
        return [p for _, p in self.layers.named_parameters()]

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"backbone": self.backbone_parameters(), "new": self.new_parameters()}

    def cast(self, dtype: torch.dtype) -> "FourDTransformer":
        """``.to(dtype)`` but keeping Wan's fp32 modules (time embedder, norms, adaLN tables)."""
        self.to(dtype)
        keep = getattr(self.backbone, "_keep_in_fp32_modules", None) or []
        for name, mod in self.backbone.named_modules():
            if any(k in name.split(".") for k in keep):
                mod.float()
        for name, p in self.backbone.named_parameters():
            if name.split(".")[-1] == "scale_shift_table":
                p.data = p.data.float()
        return self

    def fuse_projections(self) -> None:
        """Fuse Q/K/V (self-attention) and K/V (cross-attention) into single matmuls, for
        inference (training would update copies). Results are unchanged."""
        for blk in self.backbone.blocks:
            blk.attn1.fuse_projections()
            blk.attn2.fuse_projections()

    def compile_blocks(self, **kwargs) -> None:
        """Compile the per-layer function once; all blocks share the graph (regional compile:
        parameters are graph inputs). Each mode and grid shape is one more graph, hence the
        raised recompile limit."""
        import torch._dynamo.config as dynamo_config

        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(dynamo_config, name):
                setattr(dynamo_config, name, max(64, getattr(dynamo_config, name)))
        kwargs.setdefault("dynamic", False)
        self._block_fn = torch.compile(run_block, **kwargs)
        self._layer_fn = torch.compile(self._parallel_layer, **kwargs)

    def compile_step(self, **kwargs) -> None:
        """Compile the whole block stack of a step as one graph (all blocks, sync layers and the
        layout changes into and out of the two streams), so inductor can fuse across block
        boundaries; ``mode="reduce-overhead"`` also CUDA-graphs it. Compiles for longer than
        ``compile_blocks`` (the blocks are unrolled)."""
        self.compile_blocks()  # (raises the recompile limit)
        self._block_fn, self._layer_fn = run_block, self._parallel_layer
        kwargs.setdefault("dynamic", False)
        self._streams_fn = torch.compile(self._run_streams, **kwargs)
        self._single_fn = torch.compile(self._run_single, **kwargs)
        self._mark_cudagraph_steps = kwargs.get("mode") == "reduce-overhead"

    def uncompile_blocks(self) -> None:
        """Back to eager blocks."""
        self._block_fn = run_block
        self._layer_fn = self._parallel_layer
        self._streams_fn = self._run_streams
        self._single_fn = self._run_single
        self._mark_cudagraph_steps = False

    # -- conditioning --------------------------------------------------------------------------
    def _embed_text(self, text_states: torch.Tensor) -> torch.Tensor:
        return self.backbone.condition_embedder.text_embedder(text_states)  # [B, L, D]

    def _time(self, plan: Plan, sigma: torch.Tensor):
        """(temb [B, D], tproj [B, 6, D], sync modulations per layer) for noise levels ``sigma [B]``."""
        key = None
        if self.cache_time and sigma.device.type == "cpu" and not torch.is_grad_enabled():
            key = (tuple(sigma.tolist()), plan.mode)
            if key in plan.time_cache:
                return plan.time_cache[key]
        ce = self.backbone.condition_embedder
        timestep = sigma.to(plan.text.device, torch.float32) * self.backbone_timesteps
        t = ce.timesteps_proj(timestep)
        emb_dtype = next(iter(ce.time_embedder.parameters())).dtype
        temb = ce.time_embedder(t.to(emb_dtype)).type_as(plan.text)
        temb = temb + self.layers.context_embedding(plan.context).to(temb.dtype)
        tproj = ce.time_proj(ce.act_fn(temb)).unflatten(1, (6, -1))  # [B, 6, D]
        syncs = None
        if plan.mode in ("soft", "hard") and plan.sync:
            e = self.layers.sync_embed(temb)
            layers = self.layers.soft_sync if plan.mode == "soft" else self.layers.hard_sync
            syncs = [layer.modulation_of(e) for layer in layers]
        out = (temb, tproj, syncs)
        if key is not None:
            plan.time_cache[key] = out
        return out

    # -- tokens in and out -----------------------------------------------------------------------
    def _patchify(self, conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
        """``[B, V, T, C, h, w]`` -> tokens ``[B, V, T, P, D]`` through a Conv3d patch embedding."""
        return FourDTransformer._patch_conv(x, conv.weight, conv.bias, conv.stride)

    def _reference_tokens(self, cond: torch.Tensor, mask_ch: torch.Tensor) -> torch.Tensor:
        """Tokens ``[B, V, T, P, D]`` of the reference inputs (``reference.py``). With the anchor,
        ``ref_embedding`` runs as two convolutions, the (v, 0) and (0, t) channels with the bias,
        then the (0, 0) channels without: the first is the exact computation of a model without
        the anchor, and zero anchor weights add exact zeros."""
        from .reference import reference_inputs

        conv = self.layers.ref_embedding
        if not self.anchor_input:
            return self._patchify(conv, reference_inputs(cond, mask_ch))
        n = 2 * (cond.shape[3] + mask_ch.shape[-1])  # the (v, 0) and (0, t) groups
        x = reference_inputs(cond, mask_ch, anchor=True)
        base = self._patch_conv(x[:, :, :, :n], conv.weight[:, :n].contiguous(), conv.bias, conv.stride)
        anchor = self._patch_conv(x[:, :, :, n:], conv.weight[:, n:].contiguous(), None, conv.stride)
        return base + anchor

    @staticmethod
    def _patch_conv(x: torch.Tensor, weight: torch.Tensor, bias, stride) -> torch.Tensor:
        """``_patchify`` with explicit weights: ``[B, V, T, C, h, w]`` -> ``[B, V, T, P, D]``."""
        B, V, T, C, h, w = x.shape
        D, _, kt, kh, kw = weight.shape
        if (x.device.type == "cpu" and weight.dtype in (torch.bfloat16, torch.float16)
                and (kt, kh, kw) == (1, *tuple(stride)[1:]) and stride[0] == 1 and h % kh == 0 and w % kw == 0):
            # torch's CPU conv3d in bf16 gives wrong results on a contiguous input with this
            # stride (relative error ~1 against fp32, torch 2.13): the same patch embedding as a
            # matmul, which is right there (fp32 and CUDA keep the convolution)
            p = x.to(weight.dtype).reshape(B, V, T, C, h // kh, kh, w // kw, kw).permute(0, 1, 2, 4, 6, 3, 5, 7)
            return nn.functional.linear(p.reshape(B, V, T, (h // kh) * (w // kw), C * kh * kw),
                                        weight.reshape(D, -1), bias)
        y = nn.functional.conv3d(x.permute(0, 1, 3, 2, 4, 5).reshape(B * V, C, T, h, w).to(weight.dtype),
                                 weight, bias, stride)  # [B·V, D, T, hp, wp]
        return y.flatten(3).permute(0, 2, 3, 1).reshape(B, V, T, -1, y.shape[1])

    def _head(self, x: torch.Tensor, temb: torch.Tensor, plan: Plan) -> torch.Tensor:
        """Grid-ordered tokens ``[B, M, D]`` -> velocity ``[B, V, T, C, h, w]`` (Wan's output head)."""
        bb = self.backbone
        shift, scale = (bb.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)
        x = (bb.norm_out(x.float()) * (1 + scale) + shift).type_as(x)
        x = bb.proj_out(x)  # [B, M, C·ph·pw]
        _, ph, pw = self.patch
        B, V, T, hp, wp = plan.B, plan.V, plan.T, plan.hp, plan.wp
        x = x.reshape(B, V, T, hp, wp, ph, pw, -1).permute(0, 1, 2, 7, 3, 5, 4, 6)
        return x.reshape(B, V, T, -1, hp * ph, wp * pw)

    # -- the plan --------------------------------------------------------------------------------
    def prepare(self, text_states: torch.Tensor, grid: tuple[int, int, int, int], *,
                cond: torch.Tensor | None = None, known: torch.Tensor | None = None,
                context: torch.Tensor | None = None, mode: str = "soft", sync: bool = True,
                fused_backend: str = "auto", cache: bool = True, flows: torch.Tensor | None = None) -> Plan:
        """Precompute what does not change across steps for grids of ``grid = (V, T, h, w)``.

        text_states: ``[B, L, D_text]``; cond: ``[B, V, T, C, h, w]`` clean latents (anything in
        unknown cells); known: ``[B, V, T]`` bool or ``[B, V, T, m]`` per-channel masks;
        context: ``[B]`` long (config.CONTEXT_*); mode: one of ``MODES``; sync: False runs the two
        streams independently (tests); fused_backend: ``auto|dense|flex|split`` (auto: on CUDA split
        for inference, flex with grad; on the CPU dense up to 4096 tokens, else split); flows: the
        warp input's flows ``[B, V + T, h, w, 2]`` when the caller has them (training keeps them
        with its pooled grids; ``warp.batch_grid_flows``), else computed here when needed.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        V, T, h, w = grid
        _, ph, pw = self.patch
        if h % ph or w % pw:
            raise ValueError(f"latent frames {h}x{w} are not a multiple of the patch {ph}x{pw}")
        hp, wp = h // ph, w // pw
        B = text_states.shape[0]
        dev = text_states.device
        A.note_cuda_device(dev)  # device facts read inside compiled attention (no graph break)
        note_qk_kernel_device(dev)
        P = hp * wp
        rope = self.backbone.rope
        ar = lambda n: torch.arange(n, device=rope.freqs_cos.device)  # noqa: E731
        ropes, mask = {}, None
        if mode in ("soft", "hard", "sequential"):
            ropes["view"] = tuple(r.to(dev) for r in A.rope_table(rope, ar(V), hp, wp, V - 1))
            ropes["time"] = tuple(r.to(dev) for r in A.rope_table(rope, ar(T), hp, wp, T - 1))
            kind = "streams" if mode in ("soft", "hard") else "sequential"
            layout = Layout(kind, B, V, T, P)
        else:
            if T > self.chunk_times:
                raise ValueError(f"fused mode makes at most {self.chunk_times} times a pass, got {T}")
            pos = (ar(V)[:, None] * self.chunk_times + ar(T)[None, :]).flatten()
            ropes["fused"] = tuple(r.to(dev) for r in A.rope_table(rope, pos, hp, wp, (V - 1) * self.chunk_times + T - 1))
            backend = self._fused_backend(fused_backend, dev, V * T * P)
            if backend == "dense":
                mask = A.fused_dense_mask(V, T, P, str(dev))
            elif backend == "flex":
                mask = A.fused_block_mask(V, T, P, str(dev))
            layout = Layout("fused", B, V, T, P, backend)

        text = self._embed_text(text_states)
        # padding found on the encoder states, where it is exactly zero (a half-precision GEMM
        # need not give equal rows bit for bit; the projection of equal rows is equal); only where
        # a fold can happen (finding it reads a number back from the device: not in training)
        rows = padding_rows(text_states) if self._may_fold(text) else (0, 1)
        G = 2 if layout.kind == "streams" else 1
        kv = self.text_kv(text, G, rows) if cache and self.cache_text_kv else None

        if context is None:
            context = torch.zeros(B, dtype=torch.long, device=dev)
        # The condition embedding always runs (no known cell = all-zero mask), so a sample without
        # known cells sees the same bias in training and in sampling.
        C = self.backbone.config.in_channels
        if known is None:
            known = torch.zeros(B, V, T, dtype=torch.bool, device=dev)
        if cond is None:
            if bool(known.any()):
                raise ValueError("known cells need their clean values in `cond`")
            cond = torch.zeros(B, V, T, C, h, w, device=dev, dtype=text.dtype)
        mask_ch = known.to(torch.bool)
        if mask_ch.ndim == 3:
            mask_ch = mask_ch[..., None].expand(-1, -1, -1, self.mask_channels)
        if mask_ch.shape[-1] != self.mask_channels:
            raise ValueError(f"known must have {self.mask_channels} mask channels, got {mask_ch.shape[-1]}")
        known_cells = mask_ch.all(dim=-1)  # [B, V, T]
        m = mask_ch.to(cond.dtype)[..., None, None].expand(-1, -1, -1, -1, h, w)  # [B, V, T, m, h, w]
        # Cells with no known frame contribute nothing, whatever the caller left in them.
        clean = cond * mask_ch.any(dim=-1)[..., None, None, None].to(cond.dtype)
        cond_tokens = self._patchify(self.layers.cond_embedding, torch.cat([clean, m], dim=3))
        if self.reference_inputs:
            cond_tokens = cond_tokens + self._reference_tokens(cond, mask_ch)
        if self.warp_input:
            from .warp import warp_inputs

            cond_tokens = cond_tokens + self._patchify(self.layers.warp_embedding, warp_inputs(cond, known_cells, flows))
        ref = self.flow_reference(cond, known_cells)
        # Without known cells the step's paste changes nothing; compiled, keep it rather than read
        # the answer back from the device (a graph break).
        any_known = torch.compiler.is_compiling() or bool(known_cells.any())
        return Plan(mode, sync, B, V, T, hp, wp, layout, ropes, mask, text, kv, cond_tokens,
                    cond if any_known else None, known_cells if any_known else None, context.to(dev), ref,
                    text_rows=rows)

    def text_kv(self, text: torch.Tensor, G: int, rows: tuple = (0, 1)) -> list[tuple]:
        """Every block's text keys/values for projected text ``[B, L, D]``, repeated for ``G``
        streams: ``(k, v)``, or without grad and autocast, when the text ends in padding (``rows = (J, count)``
        of ``blocks.padding_rows`` on the encoder states) and ``fold_pays``, the folded
        cross-attention ``(kbd, u, bias)`` (``blocks.fold_text_kv``; exact)."""
        blocks = self.backbone.blocks
        J, count = rows
        if self._may_fold(text):
            align = FOLD_ALIGN if text.is_cuda else 1
            if fold_pays(blocks[0].attn2.heads, text.shape[-1], text.shape[1], J, align):
                return [tuple(t.repeat(G, 1, 1) for t in fold_text_kv(blk, text, J, count, align)) for blk in blocks]
        return [tuple(t.repeat(G, 1, 1, 1) for t in text_kv(blk, text)) for blk in blocks]

    def _may_fold(self, text: torch.Tensor) -> bool:
        """Whether the cross-attention of ``text`` may be folded: the switch on, no grad, no
        autocast, and an eps on norm_q (its RMS scale goes into the logits)."""
        blocks = self.backbone.blocks
        return (text_fold_enabled() and not torch.is_grad_enabled() and not torch.is_autocast_enabled(text.device.type)
                and len(blocks) > 0 and getattr(blocks[0].attn2.norm_q, "eps", None) is not None)

    @staticmethod
    def _fused_backend(choice: str, device, M: int) -> str:
        if choice not in A.FUSED_BACKENDS:
            raise ValueError(f"fused_backend must be one of {A.FUSED_BACKENDS}, got {choice!r}")
        if choice != "auto":
            return choice
        if torch.device(device).type == "cuda":
            # inference: the exact split kernels (on cuDNN: 0.34 s a step on an H100, flex 0.37);
            # training: FlexAttention (split carries no gradient through its log-sum-exps)
            return "flex" if torch.is_grad_enabled() else "split"
        # A dense [M, M] mask is fine at test sizes; beyond, the exact split kernels (inference).
        return "dense" if M <= 4096 or torch.is_grad_enabled() else "split"

    # -- running -------------------------------------------------------------------------------
    def forward(self, noisy: torch.Tensor, sigma: torch.Tensor, text_states: torch.Tensor,
                cond: torch.Tensor | None = None, known: torch.Tensor | None = None, *,
                mode: str = "soft", context: torch.Tensor | None = None, sync: bool = True,
                fused_backend: str = "auto", return_streams: bool = False, output: str = "velocity",
                flows: torch.Tensor | None = None):
        """Velocity ``[B, V, T, C, h, w]`` for ``noisy [B, V, T, C, h, w]`` at ``sigma [B]``.

        With ``return_streams`` (parallel modes) returns ``(view, time)``: each stream through the
        output head on its own instead of their average. ``output="x0"``: the clean estimate
        instead (exact for a residual model, ``ref + r0``, at any σ; training uses it).
        """
        B, V, T, C, h, w = noisy.shape
        plan = self.prepare(text_states, (V, T, h, w), cond=cond, known=known, context=context,
                            mode=mode, sync=sync, fused_backend=fused_backend, cache=False, flows=flows)
        return self.step(plan, noisy, sigma, return_streams=return_streams, output=output)

    def step(self, plan: Plan, noisy: torch.Tensor, sigma: torch.Tensor, return_streams: bool = False,
             output: str = "velocity"):
        """One evaluation of the model on ``noisy [B, V, T, C, h, w]`` at ``sigma [B]``: the
        velocity, or with ``output="x0"`` the clean estimate (see ``forward``)."""
        if output not in ("velocity", "x0"):
            raise ValueError(f"output must be 'velocity' or 'x0', got {output!r}")
        B, V, T, C, h, w = noisy.shape
        if (B, V, T) != (plan.B, plan.V, plan.T):
            raise ValueError(f"noisy grid {(B, V, T)} does not match the plan {(plan.B, plan.V, plan.T)}")
        if sigma.ndim == 0:
            sigma = sigma.expand(B)
        if plan.known_cells is not None and plan.cond is not None:
            noisy = torch.where(plan.known_cells[..., None, None, None], plan.cond.to(noisy.dtype), noisy)
        net_in = noisy if plan.ref is None else noisy - plan.ref.to(noisy.dtype)  # residual: r_σ
        out = self._network(plan, net_in, sigma, return_streams)
        s = sigma.to(noisy.device, torch.float32).reshape(B, 1, 1, 1, 1, 1)

        def convert(y):
            if plan.ref is None:  # the head predicts the velocity
                return y if output == "velocity" else (noisy.float() - s * y.float()).type_as(y)
            # residual: the head predicts r0; x0 = ref + r0, v = (x_σ − x0)/σ (in fp32)
            x0 = plan.ref.float() + y.float()
            return x0 if output == "x0" else (noisy.float() - x0) / s

        return tuple(convert(y) for y in out) if return_streams else convert(out)

    def _network(self, plan: Plan, noisy: torch.Tensor, sigma: torch.Tensor, return_streams: bool):
        """Backbone + new layers on ``noisy [B, V, T, C, h, w]``: the output head's values."""
        B, V, T, C, h, w = noisy.shape
        temb, tproj, syncs = self._time(plan, sigma)
        tokens = self._patchify(self.backbone.patch_embedding, noisy)  # [B, V, T, P, D]
        tokens = tokens + plan.cond_tokens.to(tokens.dtype)
        M, D = V * T * plan.P, tokens.shape[-1]
        kv = plan.kv
        if kv is None:
            kv = self.text_kv(plan.text, 2 if plan.layout.kind == "streams" else 1, plan.text_rows)

        if self._mark_cudagraph_steps:
            torch.compiler.cudagraph_mark_step_begin()
        if plan.layout.kind == "streams":
            yv, yt = self._streams_fn(tokens.reshape(B, M, D), tproj, kv, syncs if plan.sync else None,
                                      plan.layout, plan.ropes, plan.mode, plan.sync)
            if return_streams:
                return self._head(yv, temb, plan), self._head(yt, temb, plan)
            return self._head(((yv.float() + yt.float()) / 2).type_as(yt), temb, plan)

        if return_streams:
            raise ValueError("return_streams needs a parallel mode (soft or hard)")
        x = self._single_fn(tokens.reshape(B, M, D), tproj, kv, plan.layout, plan.ropes, plan.mask)
        return self._head(x, temb, plan)

    def _run_streams(self, tokens, tproj, kv, syncs, layout: Layout, ropes, mode: str, sync: bool):
        """Grid-ordered tokens ``[B, M, D]`` through every parallel layer: ``(yv, yt)`` grid order."""
        B, V, T, P = layout.B, layout.V, layout.T, layout.P
        M, D = tokens.shape[1:]
        xv = tokens.view(B, V, T, P, D).transpose(1, 2).reshape(B, M, D)  # view order (t, v, p)
        x = torch.cat([xv, tokens])  # [2B, M, D]
        tproj2 = tproj.repeat(2, 1, 1)
        sync_layers = self.layers.soft_sync if mode == "soft" else self.layers.hard_sync
        share = self.share_equal_streams
        if share is None:
            share = (tokens.is_cuda and tokens.dtype in (torch.float16, torch.bfloat16)
                     and not torch.is_grad_enabled())
        # Each call runs the previous layer's sync, then block l: the sync's output pass and the
        # next block's norm1 sit in one compiled graph (inductor fuses them), and layers
        # 1 … L−1 still share one graph (layer 0 has no sync before it; the last sync runs alone).
        prev, prev_mod = None, None
        for l, blk in enumerate(self.backbone.blocks):
            # Both streams hold the same tokens at layer 0, and after every hard sync.
            shared = share and (l == 0 or (mode == "hard" and sync))
            x = self._layer_fn(blk, prev, x, tproj2, kv[l], prev_mod, layout, ropes, shared)
            prev, prev_mod = (sync_layers[l], syncs[l]) if sync else (None, None)
        if prev is not None:
            x = self._layer_fn(None, prev, x, tproj2, None, prev_mod, layout, ropes)
        yv = x[:B].view(B, T, V, P, D).transpose(1, 2).reshape(B, M, D)
        return yv, x[B:]

    def _run_single(self, x, tproj, kv, layout: Layout, ropes, mask):
        """Grid-ordered tokens ``[B, M, D]`` through every block (sequential and fused modes)."""
        for l, blk in enumerate(self.backbone.blocks):
            x = self._block_fn(blk, x, tproj, kv[l], layout, ropes, mask)
        return x

    def _parallel_layer(self, blk, prev_sync, x, tproj2, kv, prev_mod, layout: Layout, ropes,
                        shared: bool = False):
        """Sync layer l−1 (``prev_sync`` with its modulation ``prev_mod``; None before layer 0),
        then block l on both streams (``blk``; None after the last layer) — Fig. 2, one step
        shifted so that a compiled call holds a sync and the block that reads its output."""
        B, V, T, P = layout.B, layout.V, layout.T, layout.P
        if prev_sync is not None:
            x = prev_sync.apply_streams(x, B, V, T, P, prev_mod)
        if blk is None:
            return x
        if self.batch_streams:
            return run_block(blk, x, tproj2, kv, layout, ropes, shared_streams=shared)
        # the same math, one stream at a time (for the benchmark)
        xv = run_block(blk, x[:B], tproj2[:B], tuple(t[:B] for t in kv), Layout("view", B, V, T, P), ropes)
        xt = run_block(blk, x[B:], tproj2[B:], tuple(t[B:] for t in kv), Layout("time", B, V, T, P), ropes)
        return torch.cat([xv, xt])


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def timestep_of(sigma: torch.Tensor) -> torch.Tensor:
    """Wan timestep (what ``WanTransformer3DModel.forward`` takes) for noise level σ."""
    return sigma * FourDTransformer.backbone_timesteps

