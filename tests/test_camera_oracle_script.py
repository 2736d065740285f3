"""scripts/camera_oracle.py: its ground-truth correspondence is right (the diagnostic's figures
rest on it): a pixel carried from one view to another by the rendered depth and true cameras,
and back again by the other view's depth, lands where it started wherever both views see the
same surface; and the oracle keeps only matches that ground truth calls right."""


import numpy as np

from core.commands.synth import synth_run


def test_truth_round_trip_and_errors(tmp_path, load_script):
    mod = load_script("camera_oracle")
    run = tmp_path / "scene"
    synth_run(run, 1_000_000_002, 3, 2, 72, 128, videos=False)
    truth = mod.Truth(run)
    H, W = truth.depth.shape[-2:]
    ys, xs = np.mgrid[4:H - 4:3, 4:W - 4:3]
    xy = np.stack([xs.ravel(), ys.ravel()], 1).astype(float)
    xy = xy[truth.depth[0, 1][ys.ravel(), xs.ravel()] > 0]  # not sky
    there = truth.project(0, 2, 1, xy)
    inside = (there[:, 0] > 1) & (there[:, 0] < W - 2) & (there[:, 1] > 1) & (there[:, 1] < H - 2)
    back = truth.project(2, 0, 1, there[inside])
    err = np.linalg.norm(back - xy[inside], axis=1)
    assert inside.sum() > 100
    assert np.median(err) < 0.6  # (depth is read at the nearest pixel: not exact, but close)
    assert np.mean(err < 1.5) > 0.8  # the rest: occlusions and depth edges
    assert np.median(np.linalg.norm(there - xy, axis=1)) > 2  # the views differ: not a trivial identity

    # errors(): a match to the true partner scores ~0, one moved by 5 px scores ~5
    n = int(inside.sum())
    feats = [{"xy": xy[inside], "time": np.ones(n, int)}, None, {"xy": there[inside], "time": np.ones(n, int)}]
    m = np.stack([np.arange(n), np.arange(n)], 1)
    assert np.max(truth.errors(feats, 0, 2, m)) < 1e-6
    feats[2] = {"xy": there[inside] + [5.0, 0.0], "time": np.ones(n, int)}
    assert np.allclose(truth.errors(feats, 0, 2, m), 5.0, atol=1e-6)
