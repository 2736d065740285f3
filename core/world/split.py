"""The seed split: which scene identities are for training and which for evaluation.

A seed is a scene's identity: ``sample_scene(seed)`` is the same scene on every machine, at every
grid size. Seeds are non-negative integers below ``2**32``, split into fixed ranges:

- ``TRAIN_SEEDS = range(0, 1_000_000_000)``: training draws from here (``GridBatches(split="train")``).
- ``EVAL_SEEDS = range(1_000_000_000, 1_001_000_000)``: evaluation only; ``eval_seeds(n)`` is the
  fixed list of the first ``n`` of them, so every evaluation run scores the same scenes.
- Seeds from ``1_001_000_000`` up belong to neither (free for demos and ad-hoc runs).

The two ranges never overlap (a test checks it); training code must draw only from
``TRAIN_SEEDS`` and never from ``EVAL_SEEDS``. The studio's examples use evaluation seeds, so what
the studio shows is never a training scene.
"""

from __future__ import annotations

TRAIN_SEEDS = range(0, 1_000_000_000)
EVAL_SEEDS = range(1_000_000_000, 1_001_000_000)
MAX_SEED = 2**32 - 1


def is_eval_seed(seed: int) -> bool:
    return int(seed) in EVAL_SEEDS


def is_train_seed(seed: int) -> bool:
    return int(seed) in TRAIN_SEEDS


def split_of(seed: int) -> str:
    """'train', 'eval' or 'other'."""
    return "train" if is_train_seed(seed) else "eval" if is_eval_seed(seed) else "other"


def eval_seeds(n: int) -> list[int]:
    """The fixed evaluation scenes: the first ``n`` seeds of ``EVAL_SEEDS``."""
    if not 0 <= n <= len(EVAL_SEEDS):
        raise ValueError(f"n must be between 0 and {len(EVAL_SEEDS)}, got {n}")
    return list(EVAL_SEEDS[:n])
