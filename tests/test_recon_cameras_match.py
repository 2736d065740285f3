"""Matching on repeated textures: look-alike keypoints are measured and refused, far view pairs
must be confirmed by the chain of neighbouring pairs, and robust fits do not depend on OpenCV's
thread count."""

import cv2
import numpy as np

from core.recon.cameras import chain_check, match_pair, seeded_cv2, self_distance


def test_self_distance_is_small_for_look_alikes_and_large_for_a_distinctive_descriptor():
    rng = np.random.default_rng(0)
    a = rng.random(128).astype(np.float32) * 100
    b = rng.random(128).astype(np.float32) * 100
    desc = np.stack([a, a + 1.0, b])  # two look-alikes (a checker corner twice) and one distinct
    d = self_distance(desc)
    assert np.isclose(d[0], np.sqrt(128), rtol=1e-4) and np.isclose(d[1], np.sqrt(128), rtol=1e-4)
    assert d[2] > 10 * d[0]
    assert np.isinf(self_distance(desc[:1])[0])


def test_match_pair_self_ratio_refuses_a_match_no_closer_than_a_look_alike_in_its_own_image():
    rng = np.random.default_rng(1)
    x, far = rng.random(128).astype(np.float32) * 100, rng.random(128).astype(np.float32) * 100 + 300
    step = np.zeros(128, np.float32)
    step[0] = 10.0  # the look-alike in image a is 10 away
    fa = {"desc": np.stack([x, x + step, far + 500])}
    for cross, kept in ((9.0, False), (5.0, True)):  # 0.9 and 0.5 of the look-alike distance
        off = np.zeros(128, np.float32)
        off[1] = cross
        fb = {"desc": np.stack([x + off, far])}
        fa["self"], fb["self"] = self_distance(fa["desc"]), self_distance(fb["desc"])
        plain = match_pair(fa, fb, ratio=0.8)
        strict = match_pair(fa, fb, ratio=0.8, self_ratio=0.8)
        assert [0, 0] in plain.tolist()  # the plain ratio test keeps it either way
        assert ([0, 0] in strict.tolist()) == kept


def test_chain_check_drops_an_unconfirmed_far_pair_and_keeps_a_confirmed_one():
    ids = np.arange(40)
    pairs = {(0, 1): np.stack([ids, ids + 100], 1), (1, 2): np.stack([ids + 100, ids + 200], 1),
             # 0 -> 2 agrees with the chain 0 -> 1 -> 2 on 30 matches, 2 contradicted, 5 unknown
             (0, 2): np.concatenate([np.stack([ids[:30], ids[:30] + 200], 1), [[30, 999], [31, 998]],
                                     np.stack([ids[:5] + 500, ids[:5] + 600], 1)]),
             (1, 3): np.stack([ids + 100, ids + 300], 1)}  # no chain 1 -> 2 -> 3: nothing confirms it
    out = chain_check(pairs)
    assert set(out) == {(0, 1), (1, 2), (0, 2)}
    assert len(out[(0, 2)]) == 35 and not {30, 31} & set(out[(0, 2)][:, 0].tolist())
    assert np.array_equal(out[(0, 1)], pairs[(0, 1)])


def test_seeded_robust_fit_is_the_same_whatever_the_thread_count():
    rng = np.random.default_rng(2)
    a = rng.random((300, 2)) * 500
    b = a + np.array([20.0, 0.0]) + rng.normal(0, 0.5, (300, 2))
    b[::3] = rng.random((100, 2)) * 500  # a third are outliers
    masks = []
    before = cv2.getNumThreads()
    for threads in (1, 2, 4):
        cv2.setNumThreads(threads)
        with seeded_cv2():
            _, mask = cv2.findFundamentalMat(a, b, cv2.FM_RANSAC, 1.5, 0.99, 200)
        assert cv2.getNumThreads() == threads  # restored after the block
        masks.append(mask.ravel().copy())
    cv2.setNumThreads(before)
    assert all(np.array_equal(masks[0], m) for m in masks[1:])
    assert 150 < int(masks[0].sum()) < 260


def test_affine_simulated_features_match_a_floor_seen_at_grazing_angles_better():
    """Two views of a blobby textured floor, foreshortened in opposite ways (as between orbit
    views low over the ground): affine-simulated SIFT (``affine_max_tilt`` 2) finds more matches
    consistent with the true homography than plain SIFT."""
    from core.recon.cameras import SfMConfig, detect_features

    rng = np.random.default_rng(0)
    tex = cv2.GaussianBlur(rng.random((400, 400)).astype(np.float32), (0, 0), 4)
    tex = cv2.normalize(tex, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    src = np.float32([[0, 0], [399, 0], [399, 399], [0, 399]])
    Ha = cv2.getPerspectiveTransform(src, np.float32([[150, 60], [330, 60], [480, 280], [20, 280]]))
    Hb = cv2.getPerspectiveTransform(src, np.float32([[60, 40], [420, 90], [440, 250], [30, 280]]))
    views = np.stack([cv2.cvtColor(cv2.warpPerspective(tex, H, (512, 288)), cv2.COLOR_GRAY2RGB) for H in (Ha, Hb)])
    H_ab = Hb @ np.linalg.inv(Ha)

    def good_matches(tilt):
        fa, fb = detect_features(views, SfMConfig(affine_max_tilt=tilt))
        m = match_pair(fa, fb, ratio=0.8)
        if len(m) == 0:
            return 0
        pa = np.c_[fa["xy"][m[:, 0]], np.ones(len(m))] @ H_ab.T
        err = np.linalg.norm(pa[:, :2] / pa[:, 2:] - fb["xy"][m[:, 1]], axis=1)
        return int((err < 3).sum())

    plain, affine = good_matches(0), good_matches(2)
    assert affine > 1.5 * plain and affine >= 20, (plain, affine)


def test_chain_check_without_a_minimum_share_keeps_a_far_pair_its_few_chains_confirm():
    """Affine-simulated features find a point again under unlike descriptors, so few of a far
    pair's matches have a chain through the neighbours (the affine fallback used ``min_frac=0``
    while it kept only three-view tracks): with ``min_frac=0`` a pair whose chains
    confirm 4 of 40 matches (none contradicted) is kept whole, while the default quarter drops
    it; a pair whose chains contradict more matches than they confirm is dropped either way."""
    ids = np.arange(40)
    pairs = {(0, 1): np.stack([ids[:4], ids[:4] + 100], 1), (1, 2): np.stack([ids[:4] + 100, ids[:4] + 200], 1),
             (0, 2): np.stack([ids, ids + 200], 1)}
    assert (0, 2) not in chain_check(pairs)
    out = chain_check(pairs, min_frac=0.0)
    assert np.array_equal(out[(0, 2)], pairs[(0, 2)])
    # three of the four chained matches end elsewhere than the far pair says
    wrong = dict(pairs)
    wrong[(0, 2)] = np.concatenate([[[0, 200], [1, 901], [2, 902], [3, 903]], np.stack([ids[4:], ids[4:] + 200], 1)])
    assert (0, 2) not in chain_check(wrong, min_frac=0.0)


def test_fast_matching_of_large_keypoint_sets_gives_the_plain_matches():
    """The matrix-product matcher that affine-simulated features use (``match_pair(fast=True)``)
    returns the same mutual, ratio-tested matches as the plain one, here on 3000 x 2500 random
    descriptors of which 400 have a noisy partner (and across its blocks of 2048 rows)."""
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 255, (3000, 128)).astype(np.float32)
    b = rng.uniform(0, 255, (2500, 128)).astype(np.float32)
    b[:400] = a[1000:1400] + rng.normal(0, 20, (400, 128)).astype(np.float32)
    fa, fb = {"desc": a}, {"desc": b}
    plain = match_pair(fa, fb, 0.8)
    fast = match_pair(fa, fb, 0.8, fast=True)
    assert len(plain) >= 390 and set(map(tuple, plain.tolist())) >= {(1000 + k, k) for k in range(0, 400, 50)}
    assert len(fast) == len(plain) and set(map(tuple, fast.tolist())) == set(map(tuple, plain.tolist()))


def test_cornerness_is_zero_on_a_straight_edge_and_high_at_a_corner():
    from core.recon.cameras import cornerness

    edge = np.zeros((100, 100), np.uint8)
    edge[:, 50:] = 200  # a vertical edge between columns 49 and 50
    corner = np.zeros((100, 100), np.uint8)
    corner[50:, 50:] = 200
    assert np.allclose(cornerness(edge, np.array([[49.5, 20.0], [49.5, 80.0], [10.0, 10.0]]), 2.0), 0.0)
    assert cornerness(corner, np.array([[49.5, 49.5]]), 2.0)[0] > 0.5


def test_keypoints_on_a_striped_floor_are_dropped_and_those_of_a_blobby_texture_kept():
    """A fan of stripes (a striped floor in perspective): SIFT finds keypoints on the stripes'
    edges, where a point has no position along the edge; ``min_cornerness`` at the affine
    fallback's second candidate's 0.05 drops nearly all of them and almost none of a blobby
    texture's."""
    from core.recon.cameras import SfMConfig, detect_features

    H, W = 288, 512
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    fan = (np.floor(np.arctan2(xx - 256, yy + 200) * 40) % 2) * 100 + 80 + 0.2 * yy
    fan = np.clip(cv2.GaussianBlur(fan.astype(np.float32), (0, 0), 0.8), 0, 255).astype(np.uint8)
    rng = np.random.default_rng(0)
    blobs = cv2.GaussianBlur(rng.random((H, W)).astype(np.float32), (0, 0), 3)
    blobs = cv2.normalize(blobs, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    for img, kept_min, kept_max in ((fan, 0.0, 0.25), (blobs, 0.9, 1.0)):
        rgb = np.repeat(img[None, ..., None], 3, -1)
        n_all = len(detect_features(rgb, SfMConfig(min_cornerness=0.0))[0]["xy"])
        n_kept = len(detect_features(rgb, SfMConfig(min_cornerness=SfMConfig().affine_fallback_cornerness))[0]["xy"])
        assert n_all >= 10 and kept_min <= n_kept / n_all <= kept_max, (n_all, n_kept)


def test_root_sift_descriptors_are_unit_hellinger_vectors_that_still_match():
    """``SfMConfig.root_sift``: the same keypoints, each descriptor the square root of the
    L1-normalised SIFT one (non-negative, unit length), and a shifted copy of a textured image
    still matches at the shift."""
    from core.recon.cameras import SfMConfig, detect_features

    rng = np.random.default_rng(3)
    tex = cv2.GaussianBlur(rng.random((300, 560)).astype(np.float32), (0, 0), 3)
    tex = cv2.normalize(tex, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    views = np.stack([cv2.cvtColor(tex[6:294, 0:512], cv2.COLOR_GRAY2RGB),
                      cv2.cvtColor(tex[6:294, 24:536], cv2.COLOR_GRAY2RGB)])  # b = a moved 24 px left
    plain = detect_features(views, SfMConfig())
    root = detect_features(views, SfMConfig(root_sift=True))
    for p, r in zip(plain, root):
        assert np.array_equal(p["xy"], r["xy"])
        assert (r["desc"] >= 0).all() and np.allclose(np.linalg.norm(r["desc"], axis=1), 1.0, atol=1e-5)
        assert np.allclose(r["desc"] ** 2, p["desc"] / p["desc"].sum(axis=1, keepdims=True), atol=1e-6)
    m = match_pair(root[0], root[1], ratio=0.8)
    shift = root[0]["xy"][m[:, 0]] - root[1]["xy"][m[:, 1]]
    assert len(m) >= 50 and np.mean(np.linalg.norm(shift - [24, 0], axis=1) < 1.0) > 0.9
