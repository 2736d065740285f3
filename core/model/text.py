"""Text encoders: a tiny UMT5 with a word-level tokenizer built in code (the embedded model), or
Wan's own umT5 loaded from a model folder; both behind ``TextEncoder.encode``.

Encoding follows ``WanPipeline``: the encoder's last hidden states, cut at each prompt's length
and padded with zeros to ``max_len`` tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "</s>")


def build_word_tokenizer(words: list[str]):
    """A ``PreTrainedTokenizerFast`` over ``tokenizers.WordLevel``: lowercase, split on whitespace
    and punctuation, one id per word (unknown words -> ``[UNK]``), ``</s>`` appended. Round-trips
    through ``save_pretrained`` / ``AutoTokenizer.from_pretrained``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in words:
        w = w.strip().lower()
        if w and w not in vocab:
            vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", eos_token="</s>")


def tiny_umt5_config(vocab_size: int, **kwargs):
    """A small ``UMT5Config`` (defaults: API-NOTES' tiny encoder); ``kwargs`` override."""
    from transformers import UMT5Config

    base = dict(d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8)
    base.update(kwargs)
    return UMT5Config(vocab_size=vocab_size, **base)


class TextEncoder:
    """Tokenizer + UMT5 encoder. Runs where ``device`` says; with ``offload`` the encoder lives on
    the CPU and visits the GPU only while encoding (Wan's 5.7 B umT5 would take 11 GB)."""

    def __init__(self, tokenizer, encoder, max_len: int, offload: bool = False):
        self.tokenizer = tokenizer
        self.encoder = encoder.eval()
        self.max_len = max_len
        self.offload = offload

    @property
    def dim(self) -> int:
        return self.encoder.config.d_model

    @classmethod
    def build_tiny(cls, words: list[str], max_len: int, seed: int = 0, **config) -> "TextEncoder":
        from transformers import UMT5EncoderModel

        tok = build_word_tokenizer(words)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            enc = UMT5EncoderModel(tiny_umt5_config(len(tok.get_vocab()), **config))
        return cls(tok, enc, max_len)

    @classmethod
    def load(cls, folder: str | Path, max_len: int, dtype: torch.dtype = torch.float32,
             offload: bool = False) -> "TextEncoder":
        """From ``folder/tokenizer`` and ``folder/text_encoder`` (save_pretrained layout)."""
        from transformers import AutoTokenizer, UMT5EncoderModel

        folder = Path(folder)
        tok = AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
        enc = UMT5EncoderModel.from_pretrained(folder / "text_encoder", local_files_only=True, dtype=dtype)
        return cls(tok, enc, max_len, offload=offload)

    def save(self, folder: str | Path) -> None:
        import json

        folder = Path(folder)
        self.tokenizer.save_pretrained(folder / "tokenizer")
        # A reloaded tokenizer records how it was loaded; drop that so saves are reproducible.
        cfg_path = folder / "tokenizer" / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text())
        for key in ("is_local", "local_files_only"):
            cfg.pop(key, None)
        cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
        self.encoder.save_pretrained(folder / "text_encoder", safe_serialization=True, max_shard_size="15MB")

    def unknown_words(self, prompt: str) -> list[str]:
        """Words of ``prompt`` the tokenizer maps to ``[UNK]`` (word-level tokenizers only)."""
        unk = self.tokenizer.unk_token_id
        if unk is None:
            return []
        enc = self.tokenizer(prompt, add_special_tokens=False)
        words = self.tokenizer.convert_ids_to_tokens(enc.input_ids)
        pre = getattr(self.tokenizer, "backend_tokenizer", None)
        if pre is not None and pre.pre_tokenizer is not None:
            words = [w for w, _ in pre.pre_tokenizer.pre_tokenize_str(prompt.lower())]
        return [w for w, i in zip(words, enc.input_ids) if i == unk]

    @torch.no_grad()
    def encode(self, prompts: list[str], device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None) -> torch.Tensor:
        """``prompts`` -> ``[B, max_len, D_text]``; zeros after each prompt's last token."""
        enc = self.tokenizer(list(prompts), padding="max_length", max_length=self.max_len, truncation=True,
                             add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        run_on = torch.device(device) if self.offload else next(self.encoder.parameters()).device
        if self.offload:
            self.encoder.to(run_on)
        try:
            ids, mask = enc.input_ids.to(run_on), enc.attention_mask.to(run_on)
            states = self.encoder(ids, mask).last_hidden_state  # [B, L, D]
        finally:
            if self.offload:
                self.encoder.to("cpu")
        states = states * mask[..., None].to(states.dtype)
        return states.to(device=device, dtype=dtype or states.dtype)
