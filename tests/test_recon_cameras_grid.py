"""Cameras from a whole grid: the time columns' matches are pooled (what stands still merged into
one keypoint, what moves adding new ones), unusable cells are left out, and the orbit is found;
and the choice between column 0's cameras and the whole grid's by held-out matches."""

import numpy as np
import pytest

from core.recon.cameras import (CameraEstimate, SfMConfig, estimate_cameras, heldout_error, heldout_matches,
                                pooled_features, sampson_px)
from core.recon.geometry import rodrigues
from core.recon.metrics import camera_errors
from core.recon.toyscene import render_toy


@pytest.fixture(scope="module")
def toy_grid():
    return render_toy(views=6, times=2, height=96, width=176, arc_deg=40.0, fov_x_deg=55.0)


def test_pooled_features_merge_what_stands_still_and_add_what_moves(toy_grid):
    cfg = SfMConfig(threads=1)
    usable = np.ones((6, 2), bool)
    usable[2, 1] = False
    merged = 0
    feats = pooled_features(toy_grid.frames, usable, cfg)
    for v, f in enumerate(feats):
        cells = f["cells"]
        assert sorted(cells) == ([0] if v == 2 else [0, 1])
        n_cells = sum(len(c["xy"]) for c in cells.values())
        # time 0 keeps its own keypoints in order; later times mostly repeat them (the ground
        # stands still) and add a few new ones where the ball moved
        np.testing.assert_array_equal(f["local"][0], np.arange(len(cells[0]["xy"])))
        assert len(cells[0]["xy"]) <= len(f["xy"]) <= n_cells
        merged += n_cells - len(f["xy"])
        for t, idx in f["local"].items():
            np.testing.assert_allclose(f["xy"][idx], cells[t]["xy"], atol=0.3)
            assert len(np.unique(idx)) == len(idx)  # one cell never maps two keypoints onto one
            assert (f["time"][idx] <= t).all()
    n_later = sum(len(f["cells"][1]["xy"]) for f in feats if 1 in f["cells"])
    assert merged > 0.5 * n_later, (merged, n_later)  # most of time 1 is time 0 again
    assert merged < n_later  # ...but the ball moved: some keypoints are new


def test_camera_estimate_from_a_whole_grid_recovers_the_orbit(toy_grid):
    usable = np.ones((6, 2), bool)
    usable[1, 0] = usable[4, 1] = False  # held-out cells are never looked at
    est = estimate_cameras(toy_grid.frames, SfMConfig(threads=1), usable=usable)
    assert est.source == "features" and est.n_registered == 6
    err = camera_errors(est.viewmats, toy_grid.viewmats)
    assert err["rot_deg_max"] < 2.0, err
    assert err["tdir_deg_max"] < 5.0, err
    assert abs(est.fov_x_deg - 55.0) < 5.0
    assert est.reproj_px < 1.0


def test_a_held_out_cell_changes_nothing_it_should_not_see(toy_grid):
    """Blanking a cell that is marked unusable leaves the estimate exactly as it was."""
    usable = np.ones((6, 2), bool)
    usable[3, 1] = False
    frames = toy_grid.frames.copy()
    a = estimate_cameras(frames, SfMConfig(threads=1), usable=usable)
    frames[3, 1] = 0
    b = estimate_cameras(frames, SfMConfig(threads=1), usable=usable)
    np.testing.assert_allclose(a.viewmats, b.viewmats)


def test_whole_grid_first_takes_the_pooled_matches(toy_grid):
    """With ``whole_grid_first`` a grid of several times is estimated from its pooled matches,
    not column 0: a featureless column 0 (a fade from grey, say) does not matter then."""
    from core.recon.api import grid_cameras

    frames = toy_grid.frames.copy()
    frames[:, 0] = 128
    train = np.ones((6, 2), bool)
    est, times, used_grid, warnings = grid_cameras(frames, train, SfMConfig(threads=1, whole_grid_first=True))
    assert used_grid and times is None and not warnings
    assert est.source == "features" and est.n_registered == 6
    err = camera_errors(est.viewmats, toy_grid.viewmats)
    assert err["rot_deg_max"] < 2.0 and err["tdir_deg_max"] < 5.0, err


def test_column_0_first_falls_back_to_the_whole_grid_when_it_cannot_place_the_views(toy_grid):
    """Column 0 first (the default): a featureless column 0 places no view, and the whole
    grid takes over; without the fallback the same grid gets no camera from features."""
    from core.recon.api import grid_cameras

    frames = toy_grid.frames.copy()
    frames[:, 0] = 128
    train = np.ones((6, 2), bool)
    est, times, used_grid, warnings = grid_cameras(frames, train, SfMConfig(threads=1, whole_grid_first=False))
    assert used_grid and times is None and any("whole grid" in w for w in warnings)
    assert est.source == "features" and est.n_registered == 6
    err = camera_errors(est.viewmats, toy_grid.viewmats)
    assert err["rot_deg_max"] < 2.0 and err["tdir_deg_max"] < 5.0, err
    est0, times0, used0, _ = grid_cameras(frames, train, SfMConfig(threads=1, whole_grid_first=False,
                                                                  whole_grid_fallback=False))
    assert not used0 and est0.n_registered < 6 and times0 == [0] * 6


def test_whole_grid_first_falls_back_to_column_0_when_the_pool_places_fewer_views(toy_grid):
    """When the pooled matches place fewer views than column 0 alone (here: every later cell
    is held out, so the pool is column 0 less its held-out cells), column 0's estimate wins."""
    from core.recon.api import grid_cameras

    train = np.ones((6, 2), bool)
    train[:, 1] = False  # nothing to pool but column 0
    train[2, 1] = True
    train[2, 0] = False  # view 2 only at time 1: the pool cannot place it (alone in its column)
    est, times, used_grid, warnings = grid_cameras(toy_grid.frames, train, SfMConfig(threads=1, whole_grid_first=True))
    assert not used_grid and times == [0, 0, 1, 0, 0, 0]
    assert any("column 0 alone" in w for w in warnings)
    assert est.n_registered == 6


def test_column_0_with_views_placed_by_guided_registration_defers_to_the_whole_grid(toy_grid, monkeypatch):
    """Column 0 placing every view, some only by guided registration, is not complete: the whole
    grid is tried and wins with fewer guided views; with as many, column 0 stays."""
    import core.recon.api as api

    V = 6
    col0 = _cams(toy_grid.viewmats, toy_grid.Ks)
    col0.n_guided = 2
    for n_pool_guided, want_grid in ((0, True), (2, False)):
        pool = _cams(toy_grid.viewmats, toy_grid.Ks)
        pool.n_guided = n_pool_guided
        monkeypatch.setattr(api, "estimate_cameras", lambda images, cfg, log=None, usable=None:
                            pool if images.ndim == 5 else col0)
        est, _, used_grid, warnings = api.grid_cameras(toy_grid.frames, np.ones((V, 2), bool), SfMConfig(threads=1))
        assert used_grid == want_grid and est is (pool if want_grid else col0)
        assert any("pooled over the whole grid" in w for w in warnings) == want_grid
        # column 0 kept: the affine features were tried on it and left views to guided registration
        assert any("affine-simulated features on column 0 placed only 4 of 6" in w for w in warnings) != want_grid


def test_affine_features_on_column_0_when_neither_column_0_nor_the_whole_grid_places_every_view(toy_grid, monkeypatch):
    """Column 0 not complete and a whole grid that places every view by ordinary registration:
    the whole grid, as before, and no affine features tried. A whole grid with guided views:
    column 0 again with affine-simulated features (the fallback's settings), kept when they
    place every view by ordinary registration; when they do not, the whole grid and column 0
    compare as before; ``affine_fallback=0`` never tries them; a grid of one column tries them
    without a whole grid."""
    import core.recon.api as api

    V = 6
    col0 = _cams(toy_grid.viewmats, toy_grid.Ks)
    col0.n_guided = 2
    pool = _cams(toy_grid.viewmats, toy_grid.Ks)
    affine = _cams(toy_grid.viewmats, toy_grid.Ks)
    cfgs = []

    def fake(images, cfg, log=None, usable=None):
        cfgs.append(cfg)
        return pool if images.ndim == 5 else (affine if cfg.affine_max_tilt > 1 else col0)

    monkeypatch.setattr(api, "estimate_cameras", fake)
    cfg = SfMConfig(threads=1)
    train = np.ones((V, 2), bool)
    est, _, used_grid, _ = api.grid_cameras(toy_grid.frames, train, cfg)
    assert est is pool and used_grid and not any(c.affine_max_tilt > 1 for c in cfgs)
    pool.n_guided = 1
    cfgs.clear()
    est, times, used_grid, warnings = api.grid_cameras(toy_grid.frames, train, cfg)
    assert est is affine and not used_grid and times == [0] * V and any("affine" in w for w in warnings)
    a = [c for c in cfgs if c.affine_max_tilt > 1 and c.min_cornerness == 0]
    assert [c.min_cornerness for c in cfgs if c.affine_max_tilt > 1 and c.min_cornerness > 0] == [0.05]
    assert len(a) == 1 and a[0].affine_max_tilt == 2 and not a[0].guided and not a[0].guided_register
    assert a[0].chain_min_frac == 0.25 and a[0].pair_window == 3 and a[0].min_detect_side == 0
    assert a[0].three_view_from > 10 ** 6  # two-view tracks
    # affine features that leave a view unplaced: the whole grid (fewer guided views) as before
    affine = _cams(toy_grid.viewmats[:5], toy_grid.Ks[:5])
    est, _, used_grid, warnings = api.grid_cameras(toy_grid.frames, train, cfg)
    assert est is pool and used_grid
    assert any("affine-simulated features on column 0 placed only 5 of 6 views" in w for w in warnings)
    affine = _cams(toy_grid.viewmats, toy_grid.Ks)
    cfgs.clear()
    est, _, used_grid, _ = api.grid_cameras(toy_grid.frames, train, SfMConfig(threads=1, affine_fallback=0))
    assert est is pool and not any(c.affine_max_tilt > 1 for c in cfgs)
    cfgs.clear()
    est, _, used_grid, _ = api.grid_cameras(toy_grid.frames[:, :1], train[:, :1], cfg)
    assert est is affine and not used_grid and not any(c.whole_grid for c in cfgs)


def test_affine_features_when_the_kept_estimate_moved_its_focal_length_after_its_first_fit(toy_grid, monkeypatch):
    """An estimate about to be kept (column 0 complete, or the whole grid after an incomplete
    column 0) whose field of view moved more than ``affine_fallback_fov_shift`` after its first
    fit: column 0 again with affine features, kept when they place every view; a small move, or
    the setting off, tries nothing; affine features that leave a view unplaced keep the estimate."""
    import core.recon.api as api

    V = 6
    col0 = _cams(toy_grid.viewmats, toy_grid.Ks)
    pool = _cams(toy_grid.viewmats, toy_grid.Ks)
    good_affine = _cams(toy_grid.viewmats, toy_grid.Ks)
    affine = good_affine
    cfgs = []

    def fake(images, cfg, log=None, usable=None):
        cfgs.append(cfg)
        return pool if images.ndim == 5 else (affine if cfg.affine_max_tilt > 1 else col0)

    monkeypatch.setattr(api, "estimate_cameras", fake)
    monkeypatch.setattr(api, "choose_by_heldout", lambda *a, **k: None)
    train = np.ones((V, 2), bool)
    cfg = SfMConfig(threads=1)
    tried = lambda: [c for c in cfgs if c.affine_max_tilt > 1 and c.min_cornerness == 0]  # noqa: E731
    col0.fov_first_deg = 52.0  # 55 at the end: 3 deg, under the default 5
    est, _, used_grid, _ = api.grid_cameras(toy_grid.frames, train, cfg)
    assert est is col0 and not used_grid and not tried()
    col0.fov_first_deg = 62.0  # 7 deg
    est, times, used_grid, warnings = api.grid_cameras(toy_grid.frames, train, cfg)
    assert est is affine and not used_grid and times == [0] * V and len(tried()) == 1
    assert any("moved 7.0 deg" in w for w in warnings)
    cfgs.clear()
    est, *_ = api.grid_cameras(toy_grid.frames, train, SfMConfig(threads=1, affine_fallback_fov_shift=None))
    assert est is col0 and not tried()
    affine = _cams(toy_grid.viewmats[:5], toy_grid.Ks[:5])  # leaves a view unplaced
    est, _, _, warnings = api.grid_cameras(toy_grid.frames, train, cfg)
    assert est is col0 and len(tried()) == 1
    assert [w for w in warnings if "affine" in w] == [
        "affine-simulated features on column 0 placed only 5 of 6 views by ordinary registration (not used)"]
    # column 0 incomplete, the whole grid complete but moved: the same
    col0.fov_first_deg, col0.n_registered = 55.0, 5
    pool.fov_first_deg = 48.0
    affine = good_affine
    est, _, used_grid, _ = api.grid_cameras(toy_grid.frames, train, cfg)
    assert est is affine and not used_grid
    pool.fov_first_deg = 54.0
    est, _, used_grid, _ = api.grid_cameras(toy_grid.frames, train, cfg)
    assert est is pool and used_grid


def test_affine_features_without_edge_keypoints_replace_the_fallback_only_when_they_fit_clearly_better(
        toy_grid, monkeypatch):
    """The affine fallback kept: it is made again without the keypoints on edges
    (``min_cornerness`` at ``affine_fallback_cornerness``), and that estimate replaces it when it
    places every view by ordinary registration and its RMS error is below
    ``affine_cornerness_rms_ratio`` x the first's; else the first stays; 0 never makes it."""
    import core.recon.api as api

    V = 6
    col0 = _cams(toy_grid.viewmats, toy_grid.Ks)
    col0.n_registered = 5  # incomplete: the whole grid, then the affine fallback
    pool = _cams(toy_grid.viewmats, toy_grid.Ks)
    pool.n_guided = 1
    plain = _cams(toy_grid.viewmats, toy_grid.Ks)
    plain.reproj_px = 0.6
    corners = _cams(toy_grid.viewmats, toy_grid.Ks)
    cfgs = []

    def fake(images, cfg, log=None, usable=None):
        cfgs.append(cfg)
        if images.ndim == 5:
            return pool
        if cfg.affine_max_tilt > 1:
            return corners if cfg.min_cornerness > 0 else plain
        return col0

    monkeypatch.setattr(api, "estimate_cameras", fake)
    train = np.ones((V, 2), bool)
    for rms, n_reg, n_guided, want in ((0.4, V, 0, corners), (0.5, V, 0, plain), (0.4, V - 1, 0, plain),
                                       (0.4, V, 1, plain)):
        corners.reproj_px, corners.n_registered, corners.n_guided = rms, n_reg, n_guided
        est, _, used_grid, _ = api.grid_cameras(toy_grid.frames, train, SfMConfig(threads=1))
        assert est is want and not used_grid, (rms, n_reg, n_guided)
    corners.reproj_px, corners.n_registered, corners.n_guided = 0.4, V, 0
    cfgs.clear()
    est, *_ = api.grid_cameras(toy_grid.frames, train, SfMConfig(threads=1, affine_fallback_cornerness=0.0))
    assert est is plain and not any(c.min_cornerness > 0 for c in cfgs)


def _cams(viewmats, Ks):
    return CameraEstimate(viewmats=viewmats, Ks=Ks, points=np.zeros((0, 3)), colors=np.zeros((0, 3)),
                          source="test", fov_x_deg=55.0, n_registered=len(viewmats))


# choosing between column 0's cameras and the whole grid's by held-out matches: views further
# apart than the matching window, in later time columns, which neither estimate was fitted to


def test_sampson_distance_is_zero_for_a_projected_point_and_grows_off_the_epipolar_line(toy_grid):
    vm, K = toy_grid.viewmats, toy_grid.Ks
    X = np.array([[0.3, -0.2, 0.1], [-0.5, 0.4, 0.0]])
    uv = []
    for v in (0, 3):
        p = (np.c_[X, np.ones(2)] @ vm[v, :3].T) @ K[v].T
        uv.append(p[:, :2] / p[:, 2:])
    d = sampson_px(uv[0], uv[1], vm[0], vm[3], K[0], K[3])
    assert np.all(d < 1e-6), d
    assert np.all(sampson_px(uv[0], uv[1] + [0.0, 3.0], vm[0], vm[3], K[0], K[3]) > 0.5)


def test_held_out_matches_lie_outside_the_window_and_column_0(toy_grid):
    cfg = SfMConfig(threads=1, pair_window=1)
    m = heldout_matches(toy_grid.frames, np.ones((6, 2), bool), cfg)
    assert m and all(j - i > 1 for i, j, *_ in m)
    # a grid of one time, or one whose views all lie within the window, has none
    assert heldout_matches(toy_grid.frames[:, :1], np.ones((6, 1), bool), cfg) == []
    assert heldout_matches(toy_grid.frames, np.ones((6, 2), bool), SfMConfig(threads=1, pair_window=5)) == []


def test_held_out_error_prefers_the_true_cameras_to_a_slightly_wrong_set(toy_grid):
    m = heldout_matches(toy_grid.frames, np.ones((6, 2), bool), SfMConfig(threads=1, pair_window=1))
    true = heldout_error(m, _cams(toy_grid.viewmats, toy_grid.Ks))
    wrong_vm = toy_grid.viewmats.copy()
    for v in range(6):  # every view turned by 1 degree about its own axis
        axis = np.array([np.cos(v), np.sin(v), 0.5]) / np.linalg.norm([np.cos(v), np.sin(v), 0.5])
        wrong_vm[v, :3, :3] = rodrigues(np.radians(1.0) * axis) @ wrong_vm[v, :3, :3]
    wrong = heldout_error(m, _cams(wrong_vm, toy_grid.Ks))
    assert true < 0.5, true
    assert wrong > 2 * true, (wrong, true)


def test_choose_heldout_keeps_the_estimate_that_fits_held_out_matches(toy_grid):
    """With held-out pairs, both estimates are made and the lower held-out error wins; the
    choice matches what the two estimates score when made apart."""
    from dataclasses import replace

    from core.recon.api import grid_cameras

    cfg = SfMConfig(threads=1, pair_window=1, choose_heldout=True)
    train = np.ones((6, 2), bool)
    logs = []
    est, times, used_grid, _ = grid_cameras(toy_grid.frames, train, cfg, log=logs.append)
    assert any("held-out matches" in line for line in logs)
    m = heldout_matches(toy_grid.frames, train, cfg)
    e0 = heldout_error(m, estimate_cameras(toy_grid.frames[:, 0], cfg))
    ep = heldout_error(m, estimate_cameras(toy_grid.frames, replace(cfg, whole_grid=True), usable=train))
    assert used_grid == (ep < e0)
    assert heldout_error(m, est) == pytest.approx(min(e0, ep))
    assert times == (None if used_grid else [0] * 6)


def test_choose_heldout_without_held_out_pairs_keeps_column_0_when_the_fields_of_view_agree(toy_grid):
    from core.recon.api import grid_cameras

    logs = []
    cfg = SfMConfig(threads=1, pair_window=5, choose_heldout=True)
    est, times, used_grid, warnings = grid_cameras(toy_grid.frames, np.ones((6, 2), bool), cfg, log=logs.append)
    assert not used_grid and times == [0] * 6 and est.n_registered == 6
    assert not any("held-out" in line for line in logs)
    # the whole grid was made for the cross-check of the focal length, and agreed
    check = [line for line in logs if line.startswith("field of view cross-check")]
    assert len(check) == 1 and not any("field of view" in w for w in warnings)


def test_whole_grid_replaces_column_0_when_their_fields_of_view_disagree(toy_grid, monkeypatch):
    """Column 0 complete and kept, the whole grid complete too: more than ``fov_cross_check``
    degrees between their fields of view sends the choice to the whole grid, with a warning;
    within it, a whole grid with guided views, or one whose field of view is implausible while
    column 0's is not, column 0 stays. Off, or the field of view
    given, the whole grid is not even made."""
    import core.recon.api as api

    V = 6
    col0 = _cams(toy_grid.viewmats, toy_grid.Ks)
    col0.fov_x_deg = 66.6
    pool = _cams(toy_grid.viewmats, toy_grid.Ks)
    pool.fov_x_deg = 53.7
    calls = []

    def fake(images, cfg, log=None, usable=None):
        calls.append(images.ndim)
        return pool if images.ndim == 5 else col0

    monkeypatch.setattr(api, "estimate_cameras", fake)
    train = np.ones((V, 2), bool)
    cfg = SfMConfig(threads=1, choose_heldout=False)
    est, times, used_grid, warnings = api.grid_cameras(toy_grid.frames, train, cfg)
    assert est is pool and used_grid and times is None
    assert any("disagree on the field of view (66.6 against 53.7 deg" in w and "--fov" in w for w in warnings)
    pool.fov_x_deg = 63.0  # 3.6 deg apart
    est, times, used_grid, warnings = api.grid_cameras(toy_grid.frames, train, cfg)
    assert est is col0 and not used_grid and times == [0] * V and not any("field of view" in w for w in warnings)
    pool.fov_x_deg, pool.n_guided = 53.7, 1
    est, _, used_grid, _ = api.grid_cameras(toy_grid.frames, train, cfg)
    assert est is col0 and not used_grid
    pool.n_guided = 0
    # a whole grid whose own field of view is implausible (outside 30-75 deg) does not replace a
    # plausible column 0; the disagreement is still warned about
    col0.fov_x_deg, pool.fov_x_deg = 59.2, 5.8
    est, times, used_grid, warnings = api.grid_cameras(toy_grid.frames, train, cfg)
    assert est is col0 and not used_grid and times == [0] * V
    assert any("disagree on the field of view (59.2 against 5.8 deg; column 0's is used" in w for w in warnings)
    col0.fov_x_deg = 80.0  # both implausible: the whole grid, as before
    est, _, used_grid, _ = api.grid_cameras(toy_grid.frames, train, cfg)
    assert est is pool and used_grid
    col0.fov_x_deg, pool.fov_x_deg = 66.6, 53.7
    for off in (SfMConfig(threads=1, choose_heldout=False, fov_cross_check=None),
                SfMConfig(threads=1, choose_heldout=False, fov_x_deg=60.0)):
        calls.clear()
        est, _, used_grid, _ = api.grid_cameras(toy_grid.frames, train, off)
        assert est is col0 and not used_grid and 5 not in calls
