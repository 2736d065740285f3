"""The facade the studio, the viewer and the command line all call: one ``Engine`` per model,
``generate`` a grid into a run folder, ``reconstruct`` a run, ``info`` about the model.

Inputs (DESIGN.md): two videos (fixed-view -> row 0, freeze-time -> column 0), one image (cell
(0, 0): image to 4D) or a prompt alone (text to 4D). Requests are checked before any heavy work;
bad ones raise ``InputError`` with one line. The model loads on first use.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import InputError

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "assets" / "model"

# on_progress(step, total, preview uint8 [V, T, H, W, 3] x0 estimate or None)
ProgressFn = Callable[[int, int, "np.ndarray | None"], None]


@dataclass
class GenerateRequest:
    fixed_view: str | None = None  # path: row 0
    freeze_time: str | None = None  # path: column 0
    image: str | None = None  # path: cell (0, 0) only (image to 4D)
    prompt: str = ""  # text; alone = text to 4D
    views: int = 8
    times: int = 8
    height: int = 72
    width: int = 128
    steps: int = 25
    seed: int = 0
    mode: str = "soft"  # soft | hard | sequential | fused
    guidance: float = 1.0
    shift: float | None = None  # the noise schedule's time shift (None: the model's)
    # a grid smaller than the model's own (8 x 8) is sampled as every k-th view and time of a
    # denser one of about that size (``grid.dense_factor``): slower, and closer to what the model
    # was trained on (a 4 x 4 grid as the even cells of a 7 x 7 one)
    dense: bool = True

    @property
    def kind(self) -> str:
        """'videos', 'image' or 'text' (after ``Engine.check``)."""
        if self.fixed_view or self.freeze_time:
            return "videos"
        return "image" if self.image else "text"


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
    if device not in ("cpu", "cuda"):
        raise InputError(f"device must be auto, cpu or cuda, got {device!r}")
    return device


PRECISIONS = ("auto", "fp32", "bf16")


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise InputError(f"precision must be {', '.join(PRECISIONS)}, got {precision!r}")


def cpu_has_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX), read from Linux's cpuinfo
    flags; False where they cannot be read (other systems: fp32 is the safe choice there)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[-1].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


def resolve_precision(precision: str, device: str) -> str:
    """'fp32' or 'bf16' for ``precision`` on ``device`` (already resolved: cpu or cuda). 'auto':
    bf16 on CUDA and on CPUs with native bf16 (about a third less time there, PSNR within 0.03 dB
    of fp32 on the evaluation scenes), fp32 on other CPUs (bf16 would be emulated and slower)."""
    _check_precision(precision)
    if precision != "auto":
        return precision
    return "bf16" if device == "cuda" or cpu_has_bf16() else "fp32"


class Engine:
    """One model on one device. ``model``: "default" (``assets/model/``) or a model folder.
    ``precision``: auto, fp32 or bf16 (``resolve_precision``)."""

    def __init__(self, model: str = "default", device: str = "auto", compile: bool = False,
                 precision: str = "auto"):
        _check_precision(precision)
        self.model_id = str(model)
        self.precision_name = precision
        self._precision: str | None = None  # resolved on first use (``precision``)
        # torch.compile the blocks: each grid shape and mode compiles once (about a minute on a GPU,
        # 16-18 s on a 2-core CPU, where it needs a C++ compiler); where compiling fails, the engine
        # warns and runs uncompiled from then on (``compile_error`` says why)
        self.compile = compile
        self.compile_error: str | None = None
        self.path = DEFAULT_MODEL_DIR if model == "default" else Path(model).expanduser()
        self.device_name = device
        self._model = None
        self._hash: str | None = None
        self._facts: dict | None = None

    # -- the model ----------------------------------------------------------------------------
    def _check_folder(self) -> None:
        if self.model_id == "default" and not (self.path / "transformer" / "config.json").is_file():
            raise InputError(f"the embedded default model is missing ({self.path} has no weights yet); "
                             "pass --model PATH to a model folder")
        if not self.path.is_dir():
            raise InputError(f"model folder {self.path} does not exist")
        if not (self.path / "transformer" / "config.json").is_file():
            raise InputError(f"{self.path} is not a model folder (no transformer/config.json)")

    def facts(self) -> dict:
        """What validation needs, read from the folder's configs without loading weights."""
        if self._facts is None:
            self._check_folder()
            from .model.config import FourDConfig

            try:
                if (self.path / "fourd.json").is_file():
                    cfg = FourDConfig.load(self.path / "fourd.json")
                else:  # a plain Wan folder (pipeline imports diffusers: seconds, so only here)
                    from .model.pipeline import _foreign_config

                    cfg = _foreign_config(self.path)
                bb = json.loads((self.path / "transformer" / "config.json").read_text())
                space, time_f = 1, 1
                if cfg.codec == "wan-vae":
                    vae = json.loads((self.path / "vae" / "config.json").read_text())
                    space = 2 ** len(vae["temperal_downsample"])
                    time_f = 2 ** sum(bool(x) for x in vae["temperal_downsample"])
            except (OSError, ValueError, KeyError) as e:
                raise InputError(f"model folder {self.path} has a broken config ({type(e).__name__}: {e})") from None
            self._facts = {"config": cfg, "multiple": space * max(bb["patch_size"][1:]),
                           "time_factor": time_f, "rope_max": bb.get("rope_max_seq_len", 1024)}
        return self._facts

    @property
    def device(self) -> str:
        return resolve_device(self.device_name)

    @property
    def precision(self) -> str:
        """'fp32' or 'bf16' (``resolve_precision``, worked out once: it may read /proc/cpuinfo)."""
        if self._precision is None:
            self._precision = resolve_precision(self.precision_name, self.device)
        return self._precision

    def load(self):
        """The ``FourDModel`` (loaded once)."""
        if self._model is None:
            import torch

            from .model.pipeline import FourDModel, model_hash

            self._check_folder()
            dev = self.device
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
            model = FourDModel.from_pretrained(self.path, device=dev, dtype=dtype)
            model.transformer.fuse_projections()  # inference only: one matmul for Q, K, V
            if self.compile:
                model.transformer.compile_blocks()
            self._hash = model_hash(self.path)
            self._model = model
        return self._model

    def info(self) -> dict:
        f = self.facts()
        cfg = f["config"]
        out = {"model": self.model_id, "path": str(self.path), "device": self.device,
               "precision": self.precision,
               "codec": cfg.codec, "size_multiple": f["multiple"], "max_views": cfg.max_views,
               "chunk_times": cfg.chunk_times, "modes": ["soft", "hard", "sequential", "fused"],
               "defaults": {"views": cfg.views, "times": cfg.times, "height": cfg.height, "width": cfg.width,
                            "steps": cfg.steps, "mode": cfg.mode, "guidance": cfg.guidance, "shift": cfg.shift},
               "loaded": self._model is not None}
        if self._model is not None:
            out["hash"] = self._hash
            out["parameters"] = self._model.parameter_count()
            out["dtype"] = str(self._model.dtype).replace("torch.", "")
        return out

    # -- generate ------------------------------------------------------------------------------
    def check(self, req: GenerateRequest, out: str | Path | None = None) -> None:
        """Raise InputError unless ``req`` can be made by this model (no weights are loaded)."""
        from .grid import check_grid_shape
        from .model.config import MODES
        from .runfolder import check_new_output
        from .sampler import SampleSettings

        if bool(req.fixed_view) != bool(req.freeze_time):
            raise InputError("give both --fixed-view (row 0) and --freeze-time (column 0), or one --image, "
                             "or only a --prompt")
        if req.image and req.fixed_view:
            raise InputError("give either two videos or one image, not both")
        if req.kind == "text" and not req.prompt.strip():
            raise InputError("nothing to generate from: give two videos, an image, or a prompt")
        if req.mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, got {req.mode!r}")
        SampleSettings(steps=req.steps, guidance=req.guidance, seed=req.seed, mode=req.mode, shift=req.shift).check()
        f = self.facts()
        cfg = f["config"]
        check_grid_shape(req.views, req.times, req.height, req.width, multiple=f["multiple"])
        if req.views > cfg.max_views:
            raise InputError(f"this model makes at most {cfg.max_views} views, got {req.views}")
        tf = f["time_factor"]
        if tf > 1 and (min(req.times, cfg.chunk_times) - 1) % tf:
            raise InputError(f"times must be {tf}k+1 for this model (e.g. {tf + 1}, {2 * tf + 1}), got {req.times}")
        if req.times < 2 and req.kind == "videos":
            raise InputError("times must be at least 2 when a fixed-view video is given")
        if out is not None:
            check_new_output(out)

    def generate(self, req: GenerateRequest, out: str | Path, on_progress: ProgressFn | None = None,
                 should_cancel: Callable[[], bool] | None = None) -> Path:
        """Make the grid ``req`` asks for and write a whole run folder at ``out``; return its path."""
        import torch

        from .cpumem import keep_freed_memory
        from .cputhreads import CpuThreads
        from .grid import Grid, dense_every, dense_size, known_mask
        from .model.codec import frames_to_model
        from .runfolder import base_manifest, write_run
        from .sampler import SampleSettings, sample_long, to_uint8
        from .video import load_inputs, read_image

        t_start = time.perf_counter()
        # 1. Check the request and read the inputs (cheap; before any model weights load)
        self.check(req, out)
        cfg = self.facts()["config"]
        if req.shift is None:  # the manifest records the shift that ran
            req = dataclasses.replace(req, shift=cfg.shift)
        V, T, H, W = req.views, req.times, req.height, req.width
        kv, kt = dense_every(V, T, cfg) if req.dense else (1, 1)
        Vd, Td = dense_size(V, kv), dense_size(T, kt)  # the grid sampled; every kv-th view, kt-th time is ours
        frames = np.zeros((Vd, Td, H, W, 3), np.uint8)
        fps, extra, inputs_used = 8.0, {}, {}
        if req.kind == "videos":
            inp = load_inputs(req.fixed_view, req.freeze_time, V, T, H, W, every=(kv, kt))
            frames[0, :], frames[:, 0] = inp["row0"], inp["col0"]
            frames[0, 0] = inp["row0"][0]  # the shared cell comes from the fixed-view video
            known = known_mask(Vd, Td, "row0+col0")
            fps = inp["fps"]
            extra = {"shared_cell_psnr": inp["shared_cell_psnr"], "warning": inp["warning"]}
            inputs_used = {"fixed_view.mp4": ("video", inp["row0"][::kt]),
                           "freeze_time.mp4": ("video", inp["col0"][::kv])}
        elif req.kind == "image":
            frames[0, 0] = read_image(req.image, H, W)
            known = known_mask(Vd, Td, "cell0")
            inputs_used = {"image.png": ("image", frames[0, 0])}
        else:
            known = known_mask(Vd, Td, "none")
        t_inputs = time.perf_counter()

        # 2. Load the model
        model = self.load()
        t_loaded = time.perf_counter()
        unknown = model.text.unknown_words(req.prompt) if req.prompt else []
        if unknown:
            import warnings

            warnings.warn(f"the model does not know these words of the prompt and ignores them: {', '.join(unknown)}",
                          stacklevel=2)

        # 3. Sample
        settings = SampleSettings(steps=req.steps, guidance=req.guidance, seed=req.seed, mode=req.mode, shift=req.shift,
                                  preview_every=1 if model.codec.name == "pixels" else 0)
        step_times: list[float] = []
        threads = None
        if model.device.type == "cpu":
            keep_freed_memory()  # no page faults for each step's temporaries
            threads = CpuThreads()  # cores other processes leave free

        def on_step(step, total, preview):
            step_times.append(time.perf_counter())
            if threads is not None:
                threads.update()
            if on_progress is not None:
                on_progress(step, total, None if preview is None else to_uint8(preview)[::kv, ::kt])

        from torch._dynamo.exc import BackendCompilerFailed

        x = frames_to_model(frames)[0]
        with torch.inference_mode():
            try:
                result = sample_long(model, x, torch.from_numpy(known), req.prompt, settings,
                                     on_step=on_step, should_cancel=should_cancel)
            except BackendCompilerFailed as e:
                # (a shape compiles on its first call, so a compiler missing fails the first step; the
                # grid then starts again uncompiled, its progress from step 1)
                self._compile_failed(model, e)
                step_times.clear()
                result = sample_long(model, x, torch.from_numpy(known), req.prompt, settings,
                                     on_step=on_step, should_cancel=should_cancel)
            finally:
                if threads is not None:
                    threads.close()
        out_frames = to_uint8(result)
        out_frames[known] = frames[known]  # known cells come back exactly as given
        out_frames, known = out_frames[::kv, ::kt], known[::kv, ::kt]
        t_sampled = time.perf_counter()

        # 4. Write the run folder
        manifest = base_manifest("generate", **dataclasses.asdict(req))
        manifest.update({
            "input_kind": req.kind, "seed": req.seed,
            "model": {"id": self.model_id, "path": str(self.path), "hash": self._hash,
                      "codec": model.codec.name, "dtype": str(model.dtype).replace("torch.", "")},
            "device": str(model.device), "compiled": self.compile, "unknown_words": unknown,
            "sampled_grid": [Vd, Td], **extra,
        })
        steps_run = len(step_times)
        manifest["timings"] = {
            "inputs_s": round(t_inputs - t_start, 3), "load_s": round(t_loaded - t_inputs, 3),
            "sample_s": round(t_sampled - t_loaded, 3), "steps": steps_run,
            "per_step_s": round((t_sampled - t_loaded) / max(steps_run, 1), 4),
        }
        grid = Grid(out_frames, known, fps=fps, caption=req.prompt)
        with tempfile.TemporaryDirectory() as tmp:
            paths = {}
            for name, (what, data) in inputs_used.items():
                p = Path(tmp) / name
                if what == "video":
                    from .export import write_mp4

                    write_mp4(p, data, fps)
                else:
                    from .export import write_png

                    write_png(p, data)
                paths[name] = p
            extra_files = {"inputs/prompt.txt": req.prompt + "\n"} if req.prompt else {}
            return write_run(out, grid, manifest, inputs=paths, extra_files=extra_files)

    def _compile_failed(self, model, error: Exception) -> None:
        """Back to eager blocks for good after torch.compile failed (e.g. no C++ compiler), with a
        warning that says why."""
        import warnings

        if not self.compile:
            raise error
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        self.compile_error = first[:300]
        self.compile = False
        model.transformer.uncompile_blocks()
        warnings.warn(f"compiling the model failed on this machine ({self.compile_error}); running it uncompiled",
                      stacklevel=3)

    # -- reconstruct -----------------------------------------------------------------------------
    def reconstruct(self, run, iters=None, holdout=None, on_progress=None, should_cancel=None,
                    fov_x_deg: float | None = None) -> dict:
        """Fit deformable Gaussians to a run folder's grid (``core.recon.api.reconstruct_run``);
        ``fov_x_deg``: the frames' field of view across when known, held fixed (None: estimated)."""
        import inspect

        from .recon.api import reconstruct_run

        kwargs = dict(iters=iters, holdout=holdout, on_progress=on_progress, should_cancel=should_cancel)
        if fov_x_deg is not None:
            from .recon.cameras import SfMConfig

            kwargs["sfm"] = SfMConfig(fov_x_deg=float(fov_x_deg))
        if "device" in inspect.signature(reconstruct_run).parameters:
            kwargs["device"] = self.device
        return reconstruct_run(run, **kwargs)
