"""Splat .ply files: standard 3DGS layout, exact round trip, readable by an independent reader."""

import numpy as np
import pytest

from core.recon.ply import PROPERTIES, SH_C0, read_ply_header, read_splat_ply, write_splat_ply


def _gaussians(n=50, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, 4))
    return dict(means=rng.normal(size=(n, 3)), log_scales=rng.normal(-3, 1, size=(n, 3)),
                quats_wxyz=q / np.linalg.norm(q, axis=1, keepdims=True),
                opacity_logits=rng.normal(size=n), rgb=rng.uniform(0, 1, size=(n, 3)))


def test_ply_round_trip_reads_back_the_same_numbers(tmp_path):
    g = _gaussians()
    path = write_splat_ply(tmp_path / "s.ply", **g)
    back = read_splat_ply(path)
    for key in ("means", "log_scales", "quats_wxyz", "opacity_logits"):
        np.testing.assert_allclose(back[key], g[key].astype(np.float32), rtol=0, atol=0)
    np.testing.assert_allclose(back["rgb"], g["rgb"], atol=1e-6)
    assert np.all(back["normals"] == 0)


def test_ply_carries_standard_3dgs_attributes_in_order_for_an_independent_reader(tmp_path):
    import trimesh

    g = _gaussians(7, seed=1)
    path = write_splat_ply(tmp_path / "s.ply", **g)
    fmt, elements, _ = read_ply_header(path)
    assert fmt == "binary_little_endian"
    assert [e[0] for e in elements] == ["vertex"] and elements[0][1] == 7
    assert [p for p, _ in elements[0][2]] == list(PROPERTIES)
    assert all(t == "float" for _, t in elements[0][2])
    raw = trimesh.load(path).metadata["_ply_raw"]["vertex"]["data"]
    assert list(raw.dtype.names) == [
        "x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
        "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert all(raw.dtype[name] == np.dtype("<f4") for name in raw.dtype.names)
    np.testing.assert_allclose(raw["x"], g["means"][:, 0].astype(np.float32))
    np.testing.assert_allclose(raw["opacity"], g["opacity_logits"].astype(np.float32))
    np.testing.assert_allclose(raw["rot_0"], g["quats_wxyz"][:, 0].astype(np.float32))  # w first
    np.testing.assert_allclose(raw["f_dc_1"], ((g["rgb"][:, 1] - 0.5) / SH_C0).astype(np.float32), rtol=1e-6)
    np.testing.assert_allclose(raw["scale_2"], g["log_scales"][:, 2].astype(np.float32))


def test_ply_isotropic_log_scale_is_written_as_three_equal_scales(tmp_path):
    g = _gaussians(5)
    g["log_scales"] = g["log_scales"][:, :1]
    back = read_splat_ply(write_splat_ply(tmp_path / "iso.ply", **g))
    assert np.all(back["log_scales"] == back["log_scales"][:, :1])


def test_ply_refuses_non_finite_values_and_leaves_no_file(tmp_path):
    g = _gaussians(4)
    g["means"][2, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        write_splat_ply(tmp_path / "bad.ply", **g)
    assert not any(tmp_path.iterdir())


def test_ply_reader_rejects_files_that_are_not_splats(tmp_path):
    p = tmp_path / "mesh.ply"
    p.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty float x\n"
                  b"property float y\nproperty float z\nend_header\n" + np.zeros(3, "<f4").tobytes())
    with pytest.raises(ValueError, match="not a 3DGS splat file"):
        read_splat_ply(p)
