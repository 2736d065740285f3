"""Shared fixtures."""

import importlib.util
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture
def load_script():
    """``load_script("name")``: scripts/name.py imported as a module (scripts/ is not a package)."""

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load


@pytest.fixture(scope="module")
def engine_files(tmp_path_factory):
    """A tiny random model saved to a folder, two input clips and one image, for the engine's tests."""
    from core.export import write_png
    from core.model.testing import moving_square, tiny_model, write_clip

    d = tmp_path_factory.mktemp("engine")
    model = tiny_model(trained=True).save_pretrained(d / "model")
    fixed = write_clip(d / "fixed.mp4", moving_square(12))
    orbit = write_clip(d / "orbit.mp4", moving_square(12, seed=1)[:, :, ::-1].copy())
    image = write_png(d / "still.png", moving_square(1)[0])
    return {"model": str(model), "fixed": str(fixed), "orbit": str(orbit), "image": str(image), "dir": d}
