"""A whole 4D model as one folder: config, transformer, text encoder and codec, saved and loaded
through one code path for our own models and for real Wan2.1 (diffusers-format) folders.

Folder layout (``save_pretrained``; all weights fp16 safetensors in files of at most 15 MB)::

    fourd.json            FourDConfig (absent in a plain Wan2.1 folder: derived from it)
    transformer/          WanTransformer3DModel (the pretrained backbone)
    fourd_layers/         FourDLayers (sync, conditioning, context; absent in a plain Wan folder:
                          initialised to the identity / training-free formulas)
    text_encoder/ tokenizer/   UMT5 encoder and its tokenizer
    vae/                  AutoencoderKLWan (wan-vae codec only)

Nothing is fetched from a hub: every load is ``local_files_only``.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError

from ..errors import InputError
from .codec import PixelCodec, WanVAECodec
from .config import FourDConfig, preset
from .text import TextEncoder
from .transformer import FourDLayers, FourDTransformer, count_parameters

SHARD = "15MB"  # below the 16 MB file limit of the embedded model


class FourDModel:
    """Config + transformer + text encoder + codec; ``save_pretrained`` / ``from_pretrained``."""

    def __init__(self, config: FourDConfig, transformer: FourDTransformer, text: TextEncoder, codec):
        self.config = config
        self.transformer = transformer
        self.text = text
        self.codec = codec
        self.device = torch.device("cpu")
        self.dtype = torch.float32

    # -- building -------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: FourDConfig, words: list[str] | None = None, seed: int = 0) -> "FourDModel":
        """A fresh model with random backbone weights (and identity new layers) from ``cfg``.

        ``words``: the tokenizer vocabulary for the tiny text encoder (default for the
        ``default`` preset: ``core.world.captions.VOCABULARY``).
        """
        if words is None:
            if cfg.name == "default":
                from ..world.captions import VOCABULARY  # written by the world helper

                words = list(VOCABULARY)
            else:
                words = ["a", "the", "ball", "cube", "red", "blue", "moves", "left", "right", "on", "floor"]
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            codec = WanVAECodec.build(**cfg.vae) if cfg.codec == "wan-vae" else PixelCodec()
            transformer = FourDTransformer.from_config(cfg, mask_channels=codec.mask_channels)
        if cfg.text_encoder == "umt5" and not cfg.text:
            raise ValueError("a umt5 text encoder is loaded from a model folder, not built from a preset")
        text = TextEncoder.build_tiny(words, cfg.max_text_len, seed=seed, **cfg.text)
        if text.dim != transformer.backbone.config.text_dim:
            raise ValueError(f"text encoder width {text.dim} != backbone text_dim {transformer.backbone.config.text_dim}")
        return cls(cfg, transformer.eval(), text, codec)

    @classmethod
    def from_preset(cls, name: str, words: list[str] | None = None, seed: int = 0) -> "FourDModel":
        return cls.from_config(preset(name), words=words, seed=seed)

    # -- folders --------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the whole model folder (fp16 weights, <= 15 MB a file); returns it."""
        quiet_libraries()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.save(folder / "fourd.json")
        for name, module in (("transformer", self.transformer.backbone), ("fourd_layers", self.transformer.layers)):
            half = copy.deepcopy(module).to("cpu", torch.float16)
            half.save_pretrained(folder / name, safe_serialization=True, max_shard_size=SHARD)
        enc = self.text.encoder
        saved = TextEncoder(self.text.tokenizer, copy.deepcopy(enc).to("cpu", torch.float16), self.text.max_len)
        saved.save(folder)
        if isinstance(self.codec, WanVAECodec):
            copy.deepcopy(self.codec.vae).to("cpu").save_pretrained(folder / "vae", safe_serialization=True,
                                                                    max_shard_size=SHARD)
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> "FourDModel":
        """Load a model folder written by ``save_pretrained``, or a diffusers Wan2.1 T2V folder
        (``transformer/``, ``vae/``, ``text_encoder/``, ``tokenizer/``): one code path."""
        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(f"model folder {folder} does not exist")
        if not (folder / "transformer" / "config.json").is_file():
            raise InputError(f"{folder} is not a model folder (no transformer/config.json)")
        cfg = FourDConfig.load(folder / "fourd.json") if (folder / "fourd.json").is_file() else _foreign_config(folder)
        quiet_libraries()
        try:
            from diffusers import AutoencoderKLWan, WanTransformer3DModel

            # Weights load as float32 (fp16 on disk); ``to`` casts, keeping Wan's fp32 modules.
            # Built on the target device directly (a 1.3 B backbone initialises in a blink there).
            backbone = load_module(WanTransformer3DModel, folder / "transformer", device)
            codec = (WanVAECodec(load_module(AutoencoderKLWan, folder / "vae", device)) if cfg.codec == "wan-vae"
                     else PixelCodec())
            if (folder / "fourd_layers").is_dir():
                layers = load_module(FourDLayers, folder / "fourd_layers", device)
            else:
                with torch.device(device):
                    layers = FourDTransformer.new_layers_for(backbone, cfg, codec.mask_channels)
            text = TextEncoder.load(folder, cfg.max_text_len, dtype=torch.float32 if dtype == torch.float32 else dtype,
                                    offload=cfg.text_encoder == "umt5")
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
            raise InputError(f"model folder {folder} could not be loaded ({type(e).__name__}: {e})") from None
        model = cls(cfg, FourDTransformer(backbone, layers, cfg.chunk_times).eval(), text, codec)
        return model.to(device, dtype)

    # -- placement ------------------------------------------------------------------------------
    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> "FourDModel":
        self.device = torch.device(device)
        self.dtype = dtype or self.dtype
        self.transformer.to(self.device)
        self.transformer.cast(self.dtype)
        self.codec.to(self.device)
        if not self.text.offload:
            self.text.encoder.to("cpu")  # the tiny encoder costs nothing on the CPU
        return self

    # -- facts ----------------------------------------------------------------------------------
    @property
    def size_multiple(self) -> int:
        """Frame height and width must be multiples of this (codec factor x patch)."""
        _, ph, pw = self.transformer.patch
        return self.codec.space_factor * max(ph, pw)

    def latent_shape(self, V: int, T: int, H: int, W: int) -> tuple[int, int, int, int, int]:
        f = self.codec.space_factor
        return V, self.codec.latent_times(T), self.codec.channels, H // f, W // f

    def parameter_count(self) -> dict[str, int]:
        return {"transformer": count_parameters(self.transformer.backbone),
                "new_layers": count_parameters(self.transformer.layers),
                "text_encoder": count_parameters(self.text.encoder)}


def load_module(cls, folder: Path, device: str | torch.device = "cpu"):
    """A diffusers model (``ModelMixin``) from a ``save_pretrained`` folder, offline, in float32.

    Built from its config, then filled from its safetensors (one file or an index of shards).
    Written out because diffusers' own ``from_pretrained`` refuses Wan models without the
    ``accelerate`` package (their fp32-module rule needs low-memory loading).
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    config = cls.load_config(folder)
    with torch.device(device):
        model = cls.from_config(config)
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["diffusion_pytorch_model.safetensors"]
    state = {}
    for name in files:
        if not (folder / name).is_file():
            raise OSError(f"missing weights file {folder / name}")
        state.update(load_file(folder / name, device=str(device)))
    ignore = tuple(getattr(cls, "_keys_to_ignore_on_load_unexpected", None) or ())
    missing, unexpected = model.load_state_dict(state, strict=False)
    unexpected = [k for k in unexpected if not any(i in k for i in ignore)]
    if missing or unexpected:
        raise ValueError(f"weights do not match the config: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.float().eval()


def quiet_libraries() -> None:
    """Keep diffusers/transformers from printing progress bars and advice on every load."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()


def _foreign_config(folder: Path) -> FourDConfig:
    """A FourDConfig for a plain diffusers Wan folder (no fourd.json)."""
    has_vae = (folder / "vae" / "config.json").is_file()
    return FourDConfig(name=folder.name, codec="wan-vae" if has_vae else "pixels", text_encoder="umt5",
                       max_text_len=512, views=8, times=9 if has_vae else 8, height=288, width=512,
                       chunk_times=9 if has_vae else 8, max_views=8, steps=25, shift=3.0,
                       sync_rank=128, sync_embed_dim=256)


def model_hash(folder: str | Path) -> str:
    """A short content hash of a model folder (paths and bytes; files over 256 MB by size and
    their first and last 16 MB, so a 3 GB folder hashes in a second)."""
    folder = Path(folder)
    h = hashlib.sha256()
    for p in sorted(q for q in folder.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(folder)).encode())
        size = p.stat().st_size
        h.update(size.to_bytes(8, "little"))
        with open(p, "rb") as fh:
            if size <= 256 << 20:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            else:
                h.update(fh.read(16 << 20))
                fh.seek(size - (16 << 20))
                h.update(fh.read())
    return h.hexdigest()[:16]
