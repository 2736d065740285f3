"""reconstruct_run end to end on a tiny known grid, the model's identity start, hold-out choice,
bad grids, cancel, and the command line."""

import json
import shutil

import numpy as np
import pytest
import torch

from core.errors import Cancelled, InputError
from core.grid import Grid
from core.recon.api import choose_holdout, holdout_mask, reconstruct_run
from core.recon.cameras import SfMConfig
from core.recon.checks import check_grid_for_recon
from core.recon.fit import FitConfig
from core.recon.model import DeformableGaussians, Scene
from core.recon.ply import PROPERTIES, read_ply_header, read_splat_ply
from core.recon.toyscene import write_toy_run
from core.runfolder import base_manifest, write_run

TINY = FitConfig(iters=40, init_points=3000, max_gaussians=6000, refine_start=10, refine_every=10, refine_stop=0.8)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    return write_toy_run(tmp_path_factory.mktemp("recon") / "toy", views=4, times=2, height=72, width=128)


@pytest.fixture(scope="module")
def fitted(toy_run):
    seen = []
    out = reconstruct_run(toy_run, holdout=1, device="cpu", config=TINY,
                          on_progress=lambda it, total, p: seen.append((it, total, p)))
    return toy_run, out, seen


def test_reconstruct_run_writes_splats_renders_and_recon_json(fitted):
    run, out, seen = fitted
    assert json.loads((run / "recon.json").read_text()) == json.loads(json.dumps(out))
    for name in ["canonical.ply", "frame_000.ply", "frame_001.ply", "model.safetensors", "renders.npz",
                 "renders.png", "compare.png"]:
        assert (run / "splats" / name).is_file(), name
    assert out["files"]["frames"] == ["splats/frame_000.ply", "splats/frame_001.ply"]
    assert [p for p, _ in read_ply_header(run / "splats" / "frame_001.ply")[1][0][2]] == list(PROPERTIES)
    canon = read_splat_ply(run / "splats" / "canonical.ply")
    assert canon["means"].shape == (out["fit"]["gaussians"], 3)
    assert all(np.isfinite(v).all() for k, v in canon.items() if k != "raw")
    renders = np.load(run / "splats" / "renders.npz")
    assert renders["frames"].shape == (4, 2, 72, 128, 3) and renders["frames"].dtype == np.uint8
    assert len(out["cameras"]) == 4 and np.array(out["cameras"][0]["viewmat"]).shape == (4, 4)
    assert np.array(out["cameras"][0]["K"]).shape == (3, 3)
    assert out["holdout"] == [list(c) for c in choose_holdout(4, 2, 1)]
    assert seen and seen[-1][0] == 40 and seen[-1][1] == 40 and np.isfinite(seen[-1][2])


def test_reconstruct_run_fits_the_grid_and_reports_psnr_and_camera_errors(fitted):
    run, out, _ = fitted
    frames = Grid.load_npz(run / "grid.npz").frames
    flat_psnr = 10 * np.log10(255.0 ** 2 / np.mean((frames - frames.mean(axis=(2, 3), keepdims=True)) ** 2))
    assert out["psnr_fit_mean"] > flat_psnr + 5  # far better than each frame's mean colour
    assert out["psnr_holdout_mean"] is not None and out["psnr_holdout_mean"] > flat_psnr + 3
    held = out["holdout"][0]
    assert abs(out["psnr"][held[0]][held[1]] - out["psnr_holdout_mean"]) < 1e-3
    # the toy folder carries cameras.json: errors are measured after the fit
    assert out["camera_errors"]["rot_deg_max"] < 3.0 and out["camera_errors"]["tdir_deg_max"] < 10.0
    assert out["sfm"]["source"] == "features"


def test_a_second_reconstruct_replaces_the_splats_only_when_complete(fitted, tmp_path):
    run, _, _ = fitted
    copy = tmp_path / "again"
    shutil.copytree(run, copy)
    before = (copy / "splats" / "canonical.ply").read_bytes()
    with pytest.raises(Cancelled):
        reconstruct_run(copy, device="cpu", config=TINY, should_cancel=lambda: True)
    assert (copy / "splats" / "canonical.ply").read_bytes() == before  # untouched by the cancelled run
    out = reconstruct_run(copy, device="cpu", config=FitConfig(iters=3, init_points=500), seed=1)
    assert out["fit"]["steps"] == 3
    assert (copy / "splats" / "canonical.ply").read_bytes() != before
    assert not [p for p in copy.iterdir() if p.name.startswith(".splats")]


def test_model_starts_static_and_with_the_estimated_cameras():
    V, T = 3, 5
    vms = torch.eye(4).repeat(V, 1, 1)
    vms[:, 2, 3] = 2.0
    scene = Scene(viewmats=vms, Ks=torch.eye(3).repeat(V, 1, 1), height=16, width=16, times=T, extent=0.5)
    means = torch.randn(50, 3) * 0.3
    model = DeformableGaussians(scene, means, torch.rand(50, 3), torch.full((50,), 0.02), 0.1,
                                up=torch.tensor([0.0, -1.0, 0.0]), bg_rgb=torch.tensor([0.5, 0.6, 0.7]))
    for t in range(T):
        for v in range(V):
            assert torch.equal(model.means_at(t, v), model.params["means"])
    assert torch.equal(model.camera(torch.arange(V)), vms)
    assert model.deform.head.weight.abs().sum() == 0


def test_holdout_is_deterministic_never_cell_zero_and_keeps_a_cell_per_view():
    a = choose_holdout(8, 8, 8)
    assert a == choose_holdout(8, 8, 8) and len(a) == 8 and (0, 0) not in a
    assert len({v for v, _ in a}) == 7 and len({t for _, t in a}) == 7  # spread over rows and columns
    big = holdout_mask(3, 3, 6)
    assert big.sum() == 6 and not big[0, 0] and (~big).sum(axis=1).min() >= 1
    with pytest.raises(InputError):
        choose_holdout(3, 3, 7)
    with pytest.raises(InputError):
        holdout_mask(2, 2, [(0, 0), (0, 1)])
    with pytest.raises(InputError):
        holdout_mask(2, 2, [(5, 0)])


@pytest.mark.parametrize("kind,message", [("black", "blank"), ("repeated", "same image"), ("noise", "noise")])
def test_bad_grids_end_with_one_clear_line(tmp_path, kind, message):
    rng = np.random.default_rng(0)
    if kind == "black":
        frames = np.zeros((4, 3, 40, 64, 3), np.uint8)
    elif kind == "repeated":
        img = rng.integers(0, 255, size=(40, 64, 3), dtype=np.uint8)
        img = np.ascontiguousarray(np.repeat(np.repeat(img[::8, ::8], 8, 0), 8, 1)[:40, :64])
        frames = np.broadcast_to(img, (4, 3, 40, 64, 3)).copy()
    else:
        frames = rng.integers(0, 256, size=(4, 3, 40, 64, 3), dtype=np.uint8)
    run = write_run(tmp_path / kind, Grid(frames), base_manifest("test"), exports=False)
    with pytest.raises(InputError, match=message) as e:
        reconstruct_run(run, device="cpu", config=TINY)
    assert "\n" not in str(e.value)
    assert not (run / "splats").exists() and not (run / "recon.json").exists()


def test_a_single_view_grid_is_refused():
    with pytest.raises(InputError, match="at least 2 views"):
        check_grid_for_recon(np.zeros((1, 4, 32, 32, 3), np.uint8))


def test_cli_exits_2_with_one_line_for_a_missing_or_non_run_folder(tmp_path, capsys):
    from launch import main

    assert main(["reconstruct", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "does not exist" in err[0]
    (tmp_path / "empty").mkdir()
    assert main(["reconstruct", str(tmp_path / "empty")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_a_slow_camera_estimate_comes_out_of_the_loop_budget_not_on_top():
    from core.recon.api import SETUP_ALLOWANCE_S, loop_budget

    assert loop_budget(42.0, 5.0) == 42.0  # within the allowance: the preset's budget
    assert loop_budget(42.0, SETUP_ALLOWANCE_S + 6.0) == 36.0  # 6 s over: 6 s less loop
    assert loop_budget(42.0, 500.0) == 21.0  # never below half the budget


def test_a_known_field_of_view_is_held_fixed_through_the_fit(toy_run, tmp_path):
    run = tmp_path / "toy"
    shutil.copytree(toy_run, run)
    shutil.rmtree(run / "splats", ignore_errors=True)
    (run / "recon.json").unlink(missing_ok=True)
    K = np.array(json.loads((run / "cameras.json").read_text())["views"][0]["K"])
    fov = float(np.degrees(2 * np.arctan(128 / 2 / K[0, 0])))
    out = reconstruct_run(run, device="cpu", config=TINY, sfm=SfMConfig(fov_x_deg=fov))
    assert out["sfm"]["fov_x_deg"] == pytest.approx(fov, abs=1e-3)
    assert out["sfm"]["fov_x_deg_refined"] == pytest.approx(fov, abs=1e-3)  # the fit did not move it
    assert out["camera_errors"]["rot_deg_max"] < 3.0


def test_cli_refuses_an_absurd_field_of_view_before_writing_anything(toy_run, tmp_path, capsys):
    from launch import main

    run = tmp_path / "toy"
    shutil.copytree(toy_run, run)
    before = sorted(p.name for p in run.iterdir())
    assert main(["reconstruct", str(run), "--fov", "200", "--device", "cpu", "--replace"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "field of view" in err[0] and "between 10 and 150" in err[0]
    assert sorted(p.name for p in run.iterdir()) == before


def test_cli_refuses_to_replace_a_reconstruction_unless_asked(toy_run, tmp_path, capsys):
    from launch import main

    run = tmp_path / "toy"
    shutil.copytree(toy_run, run)
    shutil.rmtree(run / "splats", ignore_errors=True)
    (run / "recon.json").unlink(missing_ok=True)
    assert main(["reconstruct", str(run), "--device", "cpu", "--iters", "3"]) == 0
    first = (run / "recon.json").read_bytes()
    ply = (run / "splats" / "canonical.ply").read_bytes()
    capsys.readouterr()
    assert main(["reconstruct", str(run), "--device", "cpu", "--iters", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already has a reconstruction (fitted PSNR" in err[0] and "--replace" in err[0]
    assert (run / "recon.json").read_bytes() == first and (run / "splats" / "canonical.ply").read_bytes() == ply
    assert main(["reconstruct", str(run), "--device", "cpu", "--iters", "2", "--replace"]) == 0
    assert json.loads((run / "recon.json").read_text())["fit"]["steps"] == 2
