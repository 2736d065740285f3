"""Captions (deterministic, closed vocabulary, faithful to the scene) and the seed split."""

import itertools
import re

import numpy as np

from core.world import (EVAL_SEEDS, TRAIN_SEEDS, VOCABULARY, GridBatches, eval_seeds, is_eval_seed, is_train_seed,
                        make_caption, sample_scene)
from core.world.captions import COLORS, FLOOR_COLORS, MOTIONS, PATTERN_WORDS, SHAPES, SKIES


def test_captions_are_deterministic_per_seed():
    for seed in (0, 1, 12345, 1_000_000_000):
        assert sample_scene(seed) == sample_scene(seed)
        assert sample_scene(seed).caption == sample_scene(seed).caption
    assert len({sample_scene(s).caption for s in range(20)}) == 20


def test_captions_use_only_the_vocabulary():
    vocab = set(VOCABULARY)
    for seed in range(300):
        cap = sample_scene(seed).caption
        assert re.fullmatch(r"[a-z]+( [a-z]+)*", cap), cap
        assert set(cap.split(" ")) <= vocab, set(cap.split(" ")) - vocab


def test_vocabulary_is_lowercase_unique_and_every_word_is_reachable():
    assert len(VOCABULARY) == len(set(VOCABULARY))
    assert all(re.fullmatch(r"[a-z]+", w) for w in VOCABULARY)
    used = set()
    for shape, motion, pattern in itertools.product(SHAPES, MOTIONS, PATTERN_WORDS):
        for color in COLORS:
            obj = (color, pattern, shape, motion)
            used |= set(make_caption([obj, obj, obj], ("gray", "solid"), "blue").split())
    for fcolor, fpattern, sky in itertools.product(FLOOR_COLORS, PATTERN_WORDS, SKIES):
        used |= set(make_caption([("red", "solid", "box", "spin")], (fcolor, fpattern), sky).split())
    assert used == set(VOCABULARY), set(VOCABULARY) ^ used


def test_caption_describes_the_scene():
    for seed in range(40):
        spec = sample_scene(seed)
        words = spec.caption.split()
        assert 2 <= len(spec.objects) <= 5
        assert sum(w in SHAPES for w in words) == len(spec.objects)
        subject = spec.objects[0]
        assert subject.motion != "static"
        assert words[words.index(subject.shape) + 1] == MOTIONS[subject.motion][0]
        assert spec.caption.endswith(f"{spec.sky} sky") and f"{spec.floor_color}" in words


def test_train_and_eval_seeds_never_overlap():
    assert TRAIN_SEEDS.step == EVAL_SEEDS.step == 1
    assert TRAIN_SEEDS.stop <= EVAL_SEEDS.start or EVAL_SEEDS.stop <= TRAIN_SEEDS.start
    assert len(range(max(TRAIN_SEEDS.start, EVAL_SEEDS.start), min(TRAIN_SEEDS.stop, EVAL_SEEDS.stop))) == 0
    for s in eval_seeds(100):
        assert is_eval_seed(s) and not is_train_seed(s)
    assert eval_seeds(5) == eval_seeds(5) == list(eval_seeds(10)[:5])
    assert not is_eval_seed(0) and is_train_seed(0)


def test_training_batches_draw_only_training_seeds():
    it = iter(GridBatches("train", batch=4, views=1, times=1, height=16, width=16, seed=3, steps=5))
    seeds = [s for b in it for s in b["seeds"]]
    assert len(seeds) == 20 and all(is_train_seed(s) and not is_eval_seed(s) for s in seeds)
    again = [s for b in GridBatches("train", batch=4, views=1, times=1, height=16, width=16, seed=3, steps=5)
             for s in b["seeds"]]
    assert seeds == again
    evals = [s for b in GridBatches("eval", batch=3, views=1, times=1, height=16, width=16, eval_scenes=7)
             for s in b["seeds"]]
    assert evals == eval_seeds(7)


def test_example_scenes_are_evaluation_scenes():
    from core.world.examples import EXAMPLES, SHEET_SEEDS

    assert 3 <= len(EXAMPLES) <= 5
    assert all(is_eval_seed(s) for s in list(EXAMPLES.values()) + list(SHEET_SEEDS))
    assert np.unique(list(EXAMPLES.values())).size == len(EXAMPLES)


def test_seed_identity_is_locked_for_this_world_version():
    """Seeds are scene identities: if this fails, the sampler changed what a seed means; bump
    WORLD_VERSION (evaluations are only comparable within one version) and update the lock."""
    from core.world import WORLD_VERSION

    assert WORLD_VERSION == 1
    assert sample_scene(1_000_000_011).caption == (
        "a cyan striped sphere rolls past a bouncing red striped cylinder on a green checkered floor under a blue sky")
    spec = sample_scene(0)
    assert spec.caption == ("a green capsule grows beside a sliding red checkered capsule and a still gray striped box "
                            "and a bouncing black box on a white speckled floor under a gray sky")
    assert abs(spec.camera.fov_x - 0.914485) < 1e-6 and abs(spec.camera.distance0 - 6.157658) < 1e-5
