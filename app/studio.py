"""The studio: one Gradio page where an artist brings inputs, generates a 4D grid, scrubs it,
exports it and lifts it into deformable 3D Gaussians shown in the embedded viser viewer.

Order follows TRELLIS's app.py: the handlers (methods of ``Studio``, which owns the resources all
sessions share: the engine, the GPU lock, the viewers), then the layout, then the wiring. Per-user
data lives in ``gr.State`` (``app.session.Session``) and in that session's own run folders; GPU
work from every session goes through one queue (``concurrency_id="gpu"``, one at a time).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import gradio as gr
import numpy as np

from core.errors import InputError
from core.export import mosaic
from core.grid import Grid, parse_size
from core.recon.checks import check_fov

from .explore import prepare_run, scrub_html
from .inputs import Example, check_image_input, check_settings, check_sources, compare_first_frames, find_examples
from .jobs import Job, clock, explain_failure, time_left
from .session import Session, new_run_path, run_of, session_folder, session_key
from .splats import find_reconstruction, splats_zip
from .web import CSS, PAGE_JS, SCRUB_JS, VIEWER_JS, header_html, status_html, viewer_html

log = logging.getLogger("studio")

REPO = Path(__file__).resolve().parents[1]
SIZES = ["36x64", "72x128", "144x256", "288x512"]
STREAM_MODES = ["soft", "hard", "sequential", "fused"]
GPU = "gpu"  # the concurrency id every GPU job shares: one at a time, across all sessions


@dataclass
class StudioConfig:
    """How the studio is served; ``from_args`` reads launch.py's ``app`` arguments."""

    runs: Path = Path("runs")  # every session writes under runs/session-KEY/
    examples: Path | None = REPO / "assets" / "examples"
    host: str = "127.0.0.1"  # this machine only unless asked
    port: int = 7860
    viewer_port: int = 8080  # first viewer's port; each session's viewer takes the next free one
    model: str = "default"
    device: str = "auto"
    precision: str = "auto"  # Engine's: auto, fp32 or bf16
    compile: bool = False  # Engine's: torch.compile the blocks (faster after each size's first grid)
    max_file_size: str = "500mb"  # per upload
    max_viewers: int = 8  # live 3D viewers (one per session); the least recent is closed beyond this

    @classmethod
    def from_args(cls, args) -> "StudioConfig":
        return cls(runs=Path(args.runs or "runs"), host=args.host, port=args.port,
                   viewer_port=args.viewer_port, model=args.model, device=args.device,
                   precision=args.precision, compile=args.compile)


PREVIEW_MAX_WIDTH = 1280  # the live preview is only a glance: keep its PNGs small
PREVIEW_EVERY_S = 0.5  # and send at most two a second


def _preview_mosaic(preview: np.ndarray) -> np.ndarray:
    """The live preview: the denoising grid [V, T, H, W, 3] as a V x T sheet, subsampled to fit."""
    preview = np.asarray(preview, np.uint8)
    V, T, H, W, _ = preview.shape
    k = max(1, -(-T * W // PREVIEW_MAX_WIDTH))
    small = preview[:, :, ::k, ::k]  # [V, T, H/k, W/k, 3]
    return mosaic(small.reshape(V * T, *small.shape[2:]), V, T)


def _size_mb(path: Path) -> str:
    n = Path(path).stat().st_size
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"


class Studio:
    """The handlers, and the resources every session shares (never user data)."""

    def __init__(self, config: StudioConfig, viewer_factory: Callable[..., Any] | None = None):
        self.config = replace(config, runs=Path(config.runs).resolve())
        self.viewer_factory = viewer_factory
        self.examples: list[Example] = find_examples(config.examples)
        self._gpu = threading.Lock()  # held by every engine call
        self._engine = None
        self._engine_model: str | None = None
        self._viewers: OrderedDict[str, Any] = OrderedDict()  # session key -> viewer
        self._viewers_lock = threading.Lock()
        self.c: dict[str, Any] = {}  # the page's components by name, set by build_demo

    # -- shared resources ------------------------------------------------------------------
    def engine(self, model: str):
        """The engine for ``model``, loaded on first use (call with the GPU lock held)."""
        model = (model or "").strip() or self.config.model
        if self._engine is None or self._engine_model != model:
            try:
                from core.engine import Engine
            except ImportError as e:
                raise InputError(f"the engine is not installed in this checkout ({e})") from None
            self._engine = None  # free the old model before loading the next
            self._engine = Engine(model=model, device=self.config.device, precision=self.config.precision,
                                  compile=self.config.compile)
            self._engine_model = model
        return self._engine

    def viewer_for(self, key: str):
        """This session's 3D viewer, started on first use (None without viser)."""
        if self.viewer_factory is None:
            return None
        with self._viewers_lock:
            if key in self._viewers:
                self._viewers.move_to_end(key)
                return self._viewers[key]
            while len(self._viewers) >= self.config.max_viewers:
                _, old = self._viewers.popitem(last=False)
                old.stop()
            viewer = self.viewer_factory(host=self.config.host, port=self.config.viewer_port)
            self._viewers[key] = viewer
            return viewer

    def close(self) -> None:
        with self._viewers_lock:
            for v in self._viewers.values():
                v.stop()
            self._viewers.clear()

    # -- handlers: inputs ------------------------------------------------------------------
    def on_videos(self, fixed, freeze, size):
        """Check the two clips as soon as they arrive and compare their first frames."""
        try:
            H, W = parse_size(str(size))
        except InputError:
            H, W = 72, 128
        image, note, kind = compare_first_frames(fixed, freeze, H, W)
        return gr.update(value=image, visible=image is not None), status_html(note, kind)

    def on_image(self, state: Session, upload: dict | None, size):
        """Check the start image and remember its path for generation.

        Wired with ``preprocess=False``: gr.Image would open the upload with PIL before any handler
        runs, and a corrupt or enormous file would fail there with PIL's words, not ours.
        """
        image = state.image = (upload or {}).get("path") or None
        if not image:
            return status_html("Upload one image: it becomes view 0 at time 0.", "info")
        try:
            H, W = parse_size(str(size))
        except InputError:
            H, W = 72, 128
        try:
            check_image_input(image, H, W)
        except InputError as e:
            return status_html(str(e), "error")
        return status_html("The image is fine: it becomes view 0 at time 0; everything else is generated.", "ok")

    def on_mode(self, state: Session, mode: str) -> None:
        state.mode = mode

    def on_dice(self) -> int:
        return random.randrange(0, 2**31)

    # -- handlers: generate ----------------------------------------------------------------
    def check_generate(self, state: Session, fixed, freeze, prompt, views, times, size, steps, seed, stream,
                       guidance, shift=0, dense=True):
        """Runs before the job is queued, so bad input is refused at once with the reason."""
        try:
            s = check_settings(views, times, size, steps, seed, stream, guidance, shift, dense)
            check_sources(state.mode, fixed, freeze, state.image, prompt, s.height, s.width)
        except InputError as e:
            raise gr.Error(str(e), title="Cannot generate yet", duration=None, print_exception=False) from None
        state.cancel, state.generating = False, True
        state.notes.pop("generate", None)
        c = self.c
        return {c["status"]: status_html("Waiting for the GPU…", "busy"),
                c["go"]: gr.update(interactive=False), c["make_inputs"]: gr.update(interactive=False)}

    def _request(self, mode, fixed, freeze, image, prompt, s):
        from core.engine import GenerateRequest

        return GenerateRequest(
            fixed_view=fixed if mode == "videos" else None, freeze_time=freeze if mode == "videos" else None,
            image=image if mode == "image" else None, prompt=(prompt or "").strip() if mode == "prompt" else "",
            views=s.views, times=s.times, height=s.height, width=s.width, steps=s.steps, seed=s.seed,
            mode=s.mode, guidance=s.guidance, shift=s.shift, dense=s.dense)

    def _generate_job(self, state: Session, req, model: str, kind: str, session_hash: str | None):
        """Stream one generation to the page; return (run folder, seconds), or None if cancelled."""
        c = self.c
        out = new_run_path(self.config.runs, state, kind, session_hash)
        lower = f"the frame size (now {req.height}x{req.width}), the views (now {req.views}) or the times (now {req.times})"

        def work(on_progress, should_cancel):
            engine = self.engine(model)
            return engine.generate(req, out, on_progress=on_progress, should_cancel=should_cancel)

        yield {c["status"]: status_html("Loading the model…", "busy", 0, req.steps)}
        last_preview = -1.0
        with Job(work, lambda: state.cancel, self._gpu) as job:
            for step, total, *rest in job.reports():  # on_progress(step, total, preview or None)
                preview = rest[0] if rest else None
                upd = {c["status"]: status_html(
                    f"Denoising · step {step} of {total}", "busy", step, total,
                    f"{clock(job.elapsed)} elapsed" + (f" · {time_left(job.elapsed, step, total)}"
                                                       if step else ""))}
                if preview is not None and (job.elapsed - last_preview >= PREVIEW_EVERY_S or step == total):
                    last_preview = job.elapsed
                    upd[c["preview"]] = gr.update(value=_preview_mosaic(preview), visible=True)
                    upd[c["scrub"]] = gr.update(visible=False)
                yield upd
            try:
                run = job.result() or out
            except Exception as e:  # InputError, Cancelled, OOM, bugs: each gets its line
                msg = explain_failure(e, lower)
                hide = {c["preview"]: gr.update(visible=False), c["scrub"]: gr.update(visible=True)}
                if msg is None:
                    state.notes["generate"] = status_html("Cancelled. Nothing was saved.", "warn")
                    yield {c["status"]: state.notes["generate"], **hide}
                    return None
                yield {c["status"]: status_html(msg, "error"), **hide}
                raise gr.Error(msg, title="Generation failed", duration=None) from None
        return Path(run), job.elapsed

    def _request_or_error(self, mode, fixed, freeze, image, prompt, views, times, size, steps, seed, stream,
                          guidance, shift, dense):
        """The engine's request for these settings; gr.Error if they changed into something bad
        since the check, or if the engine is missing."""
        try:
            s = check_settings(views, times, size, steps, seed, stream, guidance, shift, dense)
            return s, self._request(mode, fixed, freeze, image, prompt, s)
        except InputError as e:
            raise gr.Error(str(e), title="Cannot generate", duration=None, print_exception=False) from None
        except ImportError as e:
            raise gr.Error(f"The engine is not installed in this checkout ({e}).") from None

    def generate(self, state: Session, fixed, freeze, prompt, views, times, size, steps, seed, stream, guidance,
                 shift, dense, model, request: gr.Request):
        s, req = self._request_or_error(state.mode, fixed, freeze, state.image, prompt, views, times, size, steps,
                                        seed, stream, guidance, shift, dense)
        done = yield from self._generate_job(state, req, model, "grid", request.session_hash)
        if done is None:
            return
        run, seconds = done
        state.runs.append(str(run))
        sampled = json.loads((Path(run) / "manifest.json").read_text()).get("sampled_grid", [s.views, s.times])
        dense = f" (the cells of a denser {sampled[0]} × {sampled[1]} grid)" if sampled != [s.views, s.times] else ""
        yield self._show_run(state, run, status=status_html(
            f"Done in {clock(seconds)}: a {s.views} × {s.times} grid at {s.height}×{s.width}{dense}. "
            "Drag the sliders to explore it.", "ok", detail=str(run)))

    def generate_inputs(self, state: Session, prompt, views, times, size, steps, seed, stream, guidance, shift,
                        dense, model, request: gr.Request):
        """Make the two input videos from the prompt: row 0 and column 0 of a text-to-4D grid."""
        _, req = self._request_or_error("prompt", None, None, None, prompt, views, times, size, steps, seed,
                                        stream, guidance, shift, dense)
        done = yield from self._generate_job(state, req, model, "prompt-inputs", request.session_hash)
        if done is None:
            return
        run, seconds = done
        state.mode = "videos"
        c = self.c
        yield {c["fixed"]: str(run / "views" / "view_00.mp4"), c["freeze"]: str(run / "times" / "time_00.mp4"),
               c["tabs"]: gr.Tabs(selected="videos"), c["preview"]: gr.update(visible=False),
               c["scrub"]: gr.update(visible=True),
               c["status"]: status_html(f"Inputs made from the prompt in {clock(seconds)}: row 0 is the fixed-view "
                                        "video, column 0 the freeze-time video. Press Generate to fill the grid.",
                                        "ok")}

    def check_prompt(self, state: Session, prompt, views, times, size, steps, seed, stream, guidance, shift=0,
                     dense=True):
        state.mode = "prompt"
        return self.check_generate(state, None, None, prompt, views, times, size, steps, seed, stream, guidance,
                                   shift, dense)

    CANCELLING = "Cancelling… the job stops at its next step (a queued one when its turn comes)."

    def on_cancel(self, state: Session):
        """The generation's Cancel: only a generation queued or running is stopped."""
        if not state.generating:
            return gr.skip()
        state.cancel = True
        return status_html(self.CANCELLING, "warn")

    def on_cancel_recon(self, state: Session):
        """The reconstruction's Cancel: only a reconstruction queued or running is stopped."""
        if not state.reconstructing:
            return gr.skip()
        state.cancel_recon = True
        return status_html(self.CANCELLING, "warn")

    def job_done(self, state: Session):
        """After a generation: the buttons back, and a cancellation's status said again, in case
        the Cancel click's own "Cancelling…" reached the page after the job's last word."""
        state.generating = False
        c = self.c
        note = state.notes.pop("generate", None)
        return {c["go"]: gr.update(interactive=True), c["make_inputs"]: gr.update(interactive=True),
                c["recon"]: gr.update(interactive=bool(state.current) and not state.reconstructing),
                c["status"]: note if note is not None else gr.skip()}

    def recon_done(self, state: Session):
        """After a reconstruction: the button back, and a cancellation's status said again."""
        state.reconstructing = ""
        c = self.c
        note = state.notes.pop("reconstruct", None)
        return {c["recon"]: gr.update(interactive=bool(state.current)),
                c["recon_status"]: note if note is not None else gr.skip()}

    # -- handlers: explore -----------------------------------------------------------------
    def _show_run(self, state: Session, run: Path, status: str | None = None) -> dict:
        """Every update that puts ``run`` in front of the user: scrub widget, videos, downloads."""
        c = self.c
        view = prepare_run(run)
        state.current, state.view = str(run), view
        d = view.downloads
        names = [Path(r).name for r in state.runs]
        upd = {
            c["scrub"]: gr.update(value=scrub_html(view), visible=True),
            c["preview"]: gr.update(visible=False),
            c["row_video"]: gr.update(value=str(view.view_video(0)), label="Row · view 0 through time"),
            c["col_video"]: gr.update(value=str(view.time_video(0)), label="Column · time 0 across views"),
            c["spiral"]: gr.update(value=str(view.spiral)),
            c["dl_grid"]: gr.update(value=str(d["grid_mp4"]), interactive=True,
                                    label=f"grid.mp4 · {_size_mb(d['grid_mp4'])}"),
            c["dl_videos"]: gr.update(value=str(d["videos_zip"]), interactive=True,
                                      label=f"videos.zip · {_size_mb(d['videos_zip'])}"),
            c["dl_frames"]: gr.update(value=str(d["frames_zip"]), interactive=True,
                                      label=f"frames.zip · {_size_mb(d['frames_zip'])}"),
            c["dl_manifest"]: gr.update(value=str(d["manifest"]), interactive=True),
            c["run_pick"]: gr.update(choices=names, value=run.name, visible=len(names) > 1),
            c["videos_row"]: gr.update(visible=True),
            c["recon"]: gr.update(value="Reconstruct", interactive=not state.reconstructing),
            c["viewer"]: viewer_html(None),
            c["dl_canonical"]: gr.update(value=None, interactive=False, label="canonical.ply"),
            c["dl_splats"]: gr.update(value=None, interactive=False, label="splats.zip"),
        }
        if not state.reconstructing:  # else the running fit's progress keeps the line
            upd[c["recon_status"]] = status_html(f"Ready to reconstruct {view.V} views × {view.T} times.", "info")
        if status is not None:
            upd[c["status"]] = status
        return upd

    def on_cell(self, state: Session, evt: gr.EventData):
        """The scrub widget reports the cell it stopped on: show that row's and column's videos."""
        view = state.view
        if view is None:
            return gr.skip(), gr.skip()
        v = int(np.clip(int(getattr(evt, "view", 0)), 0, view.V - 1))
        t = int(np.clip(int(getattr(evt, "time", 0)), 0, view.T - 1))
        return (gr.update(value=str(view.view_video(v)), label=f"Row · view {v} through time"),
                gr.update(value=str(view.time_video(t)), label=f"Column · time {t} across views"))

    def on_pick_run(self, state: Session, name: str, request: gr.Request):
        """Go back to another of this session's runs (and its reconstruction, if it has one)."""
        run = run_of(state, name or "")
        if run is None or str(run) == state.current:
            yield {}  # nothing to change (a generator that yields nothing would blank every output)
            return
        yield self._show_run(state, run, status=status_html(f"Showing {run.name}.", "info"))
        if find_reconstruction(run) is not None:
            recon_info = json.loads((run / "recon.json").read_text()) if (run / "recon.json").is_file() else {}
            yield from self._show_reconstruction(state, run, state.key or session_key(request.session_hash),
                                                 recon_info, None)

    # -- handlers: reconstruct -------------------------------------------------------------
    def check_reconstruct(self, state: Session, fov=0):
        if not state.current:
            raise gr.Error("Generate a grid first, then reconstruct it.", title="Nothing to reconstruct")
        if fov:  # 0: estimated from the frames
            try:
                check_fov(fov)
            except InputError as e:
                raise gr.Error(f"{str(e)[0].upper()}{str(e)[1:]} (or 0 to estimate it from the frames).",
                               title="Check the settings") from None
        state.cancel_recon, state.reconstructing = False, state.current  # the run on screen now
        state.notes.pop("reconstruct", None)
        c = self.c
        return {c["recon_status"]: status_html("Waiting for the GPU…", "busy"),
                c["recon"]: gr.update(interactive=False)}

    def reconstruct(self, state: Session, iters, fov, model, request: gr.Request):
        c = self.c
        run = Path(state.reconstructing or state.current)  # the run on screen when Reconstruct was pressed
        iters = int(iters) if iters else None
        fov = float(fov) if fov else None  # 0: estimated from the frames
        key = state.key or session_key(request.session_hash)

        def work(on_progress, should_cancel):
            engine = self.engine(model)
            return engine.reconstruct(run, iters=iters, fov_x_deg=fov, on_progress=on_progress,
                                      should_cancel=should_cancel)

        yield {c["recon_status"]: status_html("Loading the model…", "busy")}
        with Job(work, lambda: state.cancel_recon, self._gpu) as job:
            for it, total, *rest in job.reports():  # on_progress(iteration, total, psnr_db)
                psnr = rest[0] if rest else None
                ps = f" · PSNR {psnr:.2f} dB" if psnr is not None and np.isfinite(psnr) else ""
                yield {c["recon_status"]: status_html(
                    f"Fitting Gaussians · iteration {it} of {total}{ps}", "busy", it, total,
                    f"{clock(job.elapsed)} elapsed" + (f" · {time_left(job.elapsed, it, total)}" if it else ""))}
            try:
                info = job.result()
            except Exception as e:
                msg = explain_failure(e, "the frame size or the number of views and times of the grid")
                if msg is None:
                    state.notes["reconstruct"] = status_html("Reconstruction cancelled.", "warn")
                    yield {c["recon_status"]: state.notes["reconstruct"]}
                    return
                yield {c["recon_status"]: status_html(msg, "error")}
                raise gr.Error(msg, title="Reconstruction failed", duration=None) from None
        seconds = job.elapsed
        if str(run) != state.current:  # another run was picked or generated meanwhile: leave its page alone
            yield {c["recon_status"]: status_html(
                f"Reconstructed {run.name} in {clock(seconds)}; pick it under Run to see it in 3D.", "ok")}
            return
        yield from self._show_reconstruction(state, run, key, info, seconds)

    def _show_reconstruction(self, state: Session, run: Path, key: str, info: dict | None, seconds: float | None):
        """Downloads and the viewer for ``run``'s reconstruction (``seconds`` None: a saved one)."""
        c = self.c
        recon = find_reconstruction(run)
        if recon is None:
            msg = "The reconstruction finished but wrote no splats/canonical.ply."
            yield {c["recon_status"]: status_html(msg, "error")}
            raise gr.Error(msg)
        psnr = (info or {}).get("psnr_db", recon.info.get("psnr_db"))
        done = ("The saved reconstruction" if seconds is None else f"Reconstructed in {clock(seconds)}") + \
            (f" · PSNR {psnr:.2f} dB" if isinstance(psnr, (int, float)) else "")
        # the camera estimate's doubts (views placed by a prior, an unusual field of view, ...) stay on the page
        source = info if info is not None and "warnings" in info else recon.info
        warns = [str(w) for w in source.get("warnings") or []]
        kind, detail = ("warn", "Check the cameras: " + " · ".join(warns)) if warns else ("ok", "")
        upd = {
            c["dl_canonical"]: gr.update(value=str(recon.canonical), interactive=True,
                                         label=f"canonical.ply · {_size_mb(recon.canonical)}"),
        }
        zip_path = splats_zip(run, recon)
        upd[c["dl_splats"]] = gr.update(value=str(zip_path), interactive=True,
                                        label=f"splats.zip · {_size_mb(zip_path)}")
        viewer = self.viewer_for(key)
        if viewer is None:
            upd[c["viewer"]] = viewer_html(None, note="The 3D viewer is not available (viser is not installed); "
                                                      "the .ply files below open in any 3DGS viewer.")
            upd[c["recon_status"]] = status_html(done + ".", kind, detail=detail)
            yield upd
            return
        yield {c["recon_status"]: status_html(done + " · sending the Gaussians to the viewer…", "busy")}
        grid = Grid.load_npz(run / "grid.npz")
        viewer.show_splats(recon.frames(), cameras=recon.cameras, images=grid.frames, fps=grid.fps,
                           title=run.name)
        upd[c["viewer"]] = viewer_html(viewer.port, self.config.host)
        upd[c["recon_status"]] = status_html(
            done + ". Drag in the viewer to orbit; use its time slider, Play, and the camera buttons.", kind,
            detail=detail)
        yield upd

    # -- session end -----------------------------------------------------------------------
    def on_unload(self, request: gr.Request):
        """The tab closed: stop its viewer; drop its folder if nothing was made in it (runs stay)."""
        key = session_key(request.session_hash)
        with self._viewers_lock:
            viewer = self._viewers.pop(key, None)
        if viewer is not None:
            viewer.stop()
        folder = session_folder(self.config.runs, Session(key=key))
        if folder.is_dir() and not any(p for p in folder.iterdir() if not p.name.startswith(".")):
            shutil.rmtree(folder, ignore_errors=True)


def _theme():
    system = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"]
    mono = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]
    return gr.themes.Base(primary_hue="amber", secondary_hue="zinc", neutral_hue="zinc", font=system,
                          font_mono=mono, radius_size="md").set(
        body_background_fill_dark="#101012",
        block_background_fill_dark="#18181b",
        button_primary_text_color="#1a1204",
        button_primary_text_color_dark="#1a1204",
        button_primary_background_fill="*primary_500",
        button_primary_background_fill_dark="*primary_500",
        button_primary_background_fill_hover_dark="*primary_400",
        slider_color="*primary_500",
        slider_color_dark="*primary_500",
    )


def _section(num: int, title: str, hint: str = "") -> gr.HTML:
    h = f'<span class="hint"> — {hint}</span>' if hint else ""
    return gr.HTML(f'<div class="section"><span class="num">{num}</span>{title}{h}</div>')


def runtime_labels(device: str, precision: str) -> tuple[str, str]:
    """What the header shows for the device and precision options: the device and number format
    generation will run with ("auto" resolved, e.g. "cpu (auto)", "bf16 (auto)"), or the options
    as given when they cannot be resolved here (the engine's error says why at the first run)."""
    try:
        from core.engine import resolve_device, resolve_precision

        dev = resolve_device(device)
        prec = resolve_precision(precision, dev)
    except Exception:  # noqa: BLE001 - a header never stops the studio from starting
        return device, precision
    return (f"{dev} (auto)" if device == "auto" else dev), (f"{prec} (auto)" if precision == "auto" else prec)


def build_demo(studio: Studio) -> gr.Blocks:
    """The page. Components are kept in ``studio.c`` by name for the handlers' dict updates."""
    cfg = studio.config
    c = studio.c
    pair_examples = [e for e in studio.examples if e.fixed_view and e.freeze_time]
    image_examples = [e for e in studio.examples if e.image]

    with gr.Blocks(title="4D Video Studio", analytics_enabled=False) as demo:
        state = gr.State(Session())  # deep-copied for each new session
        gr.HTML(header_html(cfg.model, *runtime_labels(cfg.device, cfg.precision)))

        # ---- 1. inputs and 2. settings -------------------------------------------------------
        with gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=420):
                _section(1, "Inputs")
                with gr.Tabs(selected="videos") as c["tabs"]:
                    with gr.Tab("Two videos", id="videos") as tab_videos:
                        with gr.Row():
                            c["fixed"] = gr.Video(label="Fixed-view video · camera still, world moves",
                                                  sources=["upload"], height=230, elem_id="fixed_view")
                            c["freeze"] = gr.Video(label="Freeze-time video · world frozen, camera moves",
                                                   sources=["upload"], height=230, elem_id="freeze_time")
                        c["compare"] = gr.Image(label="First frames compared", show_label=False, visible=False,
                                                interactive=False, buttons=[], elem_id="compare")
                        c["video_note"] = gr.HTML(status_html(
                            "Upload a fixed-view video (camera still) and a freeze-time video (world frozen, "
                            "camera moving), or pick an example.", "info"), elem_classes="input-note", elem_id="video_note")
                        if pair_examples:
                            gr.Examples([[e.fixed_view, e.freeze_time] for e in pair_examples],
                                        inputs=[c["fixed"], c["freeze"]], label="Examples",
                                        example_labels=[e.name.replace("_", " ") for e in pair_examples],
                                        elem_id="examples")
                    with gr.Tab("One image", id="image") as tab_image:
                        c["image"] = gr.Image(label="Start image · becomes view 0 at time 0", type="filepath",
                                              sources=["upload"], height=260, elem_id="start_image")
                        c["image_note"] = gr.HTML(status_html(
                            "Upload one image: it becomes view 0 at time 0; everything else is generated.",
                            "info"), elem_classes="input-note", elem_id="image_note")
                        if image_examples:
                            gr.Examples([[e.image] for e in image_examples], inputs=[c["image"]],
                                        label="Examples", example_labels=[e.name for e in image_examples])
                    with gr.Tab("Prompt", id="prompt") as tab_prompt:
                        c["prompt"] = gr.Textbox(label="Describe the scene", lines=3, elem_id="prompt",
                                                 placeholder="a red ball bouncing on a checkered floor under a blue sky")
                        c["make_inputs"] = gr.Button("Make the two input videos from this prompt",
                                                     variant="secondary")
                        gr.HTML('<div class="hint">…or press <b>Generate</b> to make the whole grid from '
                                "the prompt.</div>")
                        prompts = [e.prompt for e in studio.examples if e.prompt]
                        if prompts:
                            gr.Examples([[p] for p in prompts[:6]], inputs=[c["prompt"]], label="Prompts")
            with gr.Column(scale=3, min_width=320):
                _section(2, "Settings")
                with gr.Row():
                    c["views"] = gr.Number(8, label="Views (V)", elem_id="views",
                                           info="cameras: the rows")
                    c["times"] = gr.Number(8, label="Times (T)", elem_id="times",
                                           info="moments: the columns")
                c["size"] = gr.Dropdown(SIZES, value="72x128", label="Frame size (H × W)",
                                        allow_custom_value=True, elem_id="size")
                c["steps"] = gr.Slider(1, 100, value=25, step=1, label="Denoising steps", elem_id="steps")
                with gr.Row(equal_height=True):
                    c["seed"] = gr.Number(0, label="Seed", scale=5, elem_id="seed")
                    c["dice"] = gr.Button("⚄ Random", scale=2, min_width=90, elem_id="dice")
                with gr.Accordion("Advanced", open=False):
                    c["stream"] = gr.Radio(STREAM_MODES, value="soft", label="Stream mode",
                                           info="soft/hard: two synced streams · sequential: ablation · "
                                                "fused: one stream (V2)")
                    c["guidance"] = gr.Slider(0.0, 10.0, value=1.0, step=0.5, label="Text guidance")
                    c["shift"] = gr.Slider(0.0, 20.0, value=0.0, step=0.5, label="Noise shift", elem_id="shift",
                                           info="0 = the model's own (9 for the default); higher spends more "
                                                "steps at high noise: smoother grids")
                    c["dense"] = gr.Checkbox(True, label="Sample small grids densely", elem_id="dense",
                                             info="a grid smaller than the model's 8 × 8 is made as every k-th cell "
                                                  "of a denser one (4 × 4 of 7 × 7): better, and slower")
                    c["model"] = gr.Textbox(cfg.model, label="Model", info="'default' (embedded) or a model folder")
                    c["recon_iters"] = gr.Slider(0, 5000, value=0, step=10, label="3D fit iterations",
                                                 info="0 = the engine's default", elem_id="recon_iters")
                    # no minimum/maximum: gradio's own refusal would name neither the field nor the range
                    c["recon_fov"] = gr.Number(0, label="3D camera field of view (degrees across)",
                                               elem_id="recon_fov",
                                               info="0 = estimated from the frames; set it when the camera's "
                                                    "is known (as reconstruct --fov)")
                with gr.Row():
                    c["go"] = gr.Button("Generate", variant="primary", size="lg", scale=3, elem_id="generate")
                    c["cancel"] = gr.Button("Cancel", variant="secondary", size="lg", scale=1, elem_id="cancel")
                c["status"] = gr.HTML(status_html("Ready.", "info"), elem_id="status")

        # ---- 3. explore ------------------------------------------------------------------------
        with gr.Row(equal_height=True):
            with gr.Column(scale=4):
                _section(3, "Explore the grid", "drag View and Time, click the contact sheet, ▶ plays time")
            with gr.Column(scale=1, min_width=220):
                c["run_pick"] = gr.Dropdown([], label="Run", elem_id="run_pick", container=False,
                                            visible=False)
        c["preview"] = gr.Image(label="Live preview · the grid as it denoises", visible=False,
                                interactive=False, elem_id="preview", buttons=[])
        c["scrub"] = gr.HTML(scrub_html(None), js_on_load=SCRUB_JS, apply_default_css=False, elem_id="scrub")
        with gr.Row(visible=False) as c["videos_row"]:
            c["row_video"] = gr.Video(label="Row · view 0 through time", interactive=False, autoplay=True,
                                      loop=True, height=220, elem_id="row_video")
            c["col_video"] = gr.Video(label="Column · time 0 across views", interactive=False, autoplay=True,
                                      loop=True, height=220, elem_id="col_video")
            c["spiral"] = gr.Video(label="Spiral walk-through", interactive=False, autoplay=True, loop=True,
                                   height=220, elem_id="spiral")

        # ---- 4. export -------------------------------------------------------------------------
        _section(4, "Export", "videos.zip: every row and column mp4 and the spiral · frames.zip: every cell as PNG")
        with gr.Row():
            dl = dict(interactive=False, variant="secondary")
            c["dl_grid"] = gr.DownloadButton("grid.mp4", elem_id="dl_grid", **dl)
            c["dl_videos"] = gr.DownloadButton("videos.zip", elem_id="dl_videos", **dl)
            c["dl_frames"] = gr.DownloadButton("frames.zip", elem_id="dl_frames", **dl)
            c["dl_manifest"] = gr.DownloadButton("manifest.json", elem_id="dl_manifest", **dl)

        # ---- 5. reconstruct --------------------------------------------------------------------
        _section(5, "Reconstruct in 3D", "deformable Gaussians in the viewer · splats.zip: the per-frame .ply sequence")
        with gr.Row(equal_height=True):
            c["recon"] = gr.Button("Reconstruct", variant="primary", interactive=False, scale=1,
                                   elem_id="reconstruct", min_width=160)
            c["recon_cancel"] = gr.Button("Cancel", variant="secondary", scale=0, min_width=100)
            with gr.Column(scale=5):
                c["recon_status"] = gr.HTML(status_html("Generate a grid first.", "info"), elem_id="recon_status")
        c["viewer"] = gr.HTML(viewer_html(None), js_on_load=VIEWER_JS, apply_default_css=False, elem_id="viewer")
        with gr.Row():
            c["dl_canonical"] = gr.DownloadButton("canonical.ply", elem_id="dl_canonical", **dl)
            c["dl_splats"] = gr.DownloadButton("splats.zip", elem_id="dl_splats", **dl)

        # ---- wiring ----------------------------------------------------------------------------
        settings = [c["views"], c["times"], c["size"], c["steps"], c["seed"], c["stream"], c["guidance"], c["shift"],
                    c["dense"]]
        sources = [c["fixed"], c["freeze"], c["prompt"]]  # the start image is in the session (on_image)
        explore_outputs = [c[k] for k in ("scrub", "preview", "row_video", "col_video", "spiral", "dl_grid",
                                          "dl_videos", "dl_frames", "dl_manifest", "run_pick", "videos_row", "recon",
                                          "recon_status", "viewer", "dl_canonical", "dl_splats", "status")]
        busy_outputs = [c["status"], c["go"], c["make_inputs"]]
        quick = dict(concurrency_limit=None, show_progress="hidden")

        for tab, mode in ((tab_videos, "videos"), (tab_image, "image"), (tab_prompt, "prompt")):
            tab.select(lambda s, m=mode: studio.on_mode(s, m), state, None, **quick)
        for video in (c["fixed"], c["freeze"]):
            video.change(studio.on_videos, [c["fixed"], c["freeze"], c["size"]], [c["compare"], c["video_note"]],
                         concurrency_limit=4)
        c["image"].change(studio.on_image, [state, c["image"], c["size"]], c["image_note"], concurrency_limit=4,
                          preprocess=False)
        c["dice"].click(studio.on_dice, None, c["seed"], **quick)

        c["go"].click(studio.check_generate, [state, *sources, *settings], busy_outputs, **quick).success(
            studio.generate, [state, *sources, *settings, c["model"]], explore_outputs,
            concurrency_id=GPU, concurrency_limit=1, show_progress="hidden",
        ).then(studio.job_done, state, [c["go"], c["make_inputs"], c["recon"], c["status"]], **quick)
        c["make_inputs"].click(studio.check_prompt, [state, c["prompt"], *settings], busy_outputs, **quick).success(
            studio.generate_inputs, [state, c["prompt"], *settings, c["model"]],
            [c["fixed"], c["freeze"], c["tabs"], c["preview"], c["scrub"], c["status"]],
            concurrency_id=GPU, concurrency_limit=1, show_progress="hidden",
        ).then(studio.job_done, state, [c["go"], c["make_inputs"], c["recon"], c["status"]], **quick)
        c["cancel"].click(studio.on_cancel, state, c["status"], **quick)
        c["recon_cancel"].click(studio.on_cancel_recon, state, c["recon_status"], **quick)

        # every report is sent ("always_last" can resend an older report's data) and served in order
        c["scrub"].release(studio.on_cell, state, [c["row_video"], c["col_video"]], concurrency_limit=1,
                           show_progress="hidden", trigger_mode="multiple")
        c["run_pick"].input(studio.on_pick_run, [state, c["run_pick"]], explore_outputs, concurrency_limit=4)

        c["recon"].click(studio.check_reconstruct, [state, c["recon_fov"]], [c["recon_status"], c["recon"]],
                         **quick).success(
            studio.reconstruct, [state, c["recon_iters"], c["recon_fov"], c["model"]],
            [c["recon_status"], c["viewer"], c["dl_canonical"], c["dl_splats"]],
            concurrency_id=GPU, concurrency_limit=1, show_progress="hidden",
        ).then(studio.recon_done, state, [c["recon"], c["recon_status"]], **quick)
        demo.unload(studio.on_unload)
    return demo


def serve(studio: Studio, demo: gr.Blocks, block: bool = True):
    """Start the page (and nothing else: viewers start per session). Returns gradio's launch tuple."""
    cfg = studio.config
    cfg.runs.mkdir(parents=True, exist_ok=True)
    allowed = [str(cfg.runs)]
    if cfg.examples is not None and Path(cfg.examples).is_dir():
        allowed.append(str(Path(cfg.examples).resolve()))
    demo.queue(default_concurrency_limit=1, max_size=64)
    try:
        return demo.launch(
            server_name=cfg.host, server_port=cfg.port, prevent_thread_lock=not block, inbrowser=False,
            allowed_paths=allowed, max_file_size=cfg.max_file_size, theme=_theme(), css=CSS, js=PAGE_JS,
            footer_links=[], run_history=False, enable_monitoring=False, mcp_server=False, ssr_mode=False,
            show_error=False, quiet=not block,
        )
    except OSError as e:
        raise InputError(f"cannot serve the studio on {cfg.host}:{cfg.port} ({e}); choose another --port") from None


def launch_studio(args, viewer_factory: Callable[..., Any] | None = None) -> int:
    """``python launch.py [app]``: serve the studio until interrupted."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    studio = Studio(StudioConfig.from_args(args), viewer_factory=viewer_factory)
    if viewer_factory is None:
        log.warning("the 3D viewer is not available (viser missing); reconstructions still export .ply")
    try:
        serve(studio, build_demo(studio), block=True)
    finally:
        studio.close()
    return 0
