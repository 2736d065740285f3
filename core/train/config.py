"""The settings of one training run, as a typed dataclass saved beside the weights.

A run is a wall-clock budget split into phases: each phase has a stage (1 video rows/columns,
2 pseudo-4D, 3 synthetic 4D) and a frame size, and lasts a share of the budget. The default
schedule spends little on the warm-up stages and most on stage 3 at full size, with a
low-resolution start (the paper's curriculum; 40x72 rather than 36x64 because the default
model's 8x8 patches must tile the frame).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import InputError
from ..grid import parse_size

DEFAULT_SCHEDULE = "1@40x72:0.08,2@40x72:0.04,3@40x72:0.28,3@72x128:0.6"
STAGE_NAMES = {1: "video", 2: "pseudo4d", 3: "synthetic4d"}


@dataclass
class Phase:
    stage: int  # 1, 2 or 3
    height: int
    width: int
    share: float  # of the whole budget


def parse_schedule(text: str) -> list[Phase]:
    """'1@36x64:0.1,3@72x128:0.9' -> phases; shares are normalised to sum to 1.

    A bare stage ('3') means stage 3 at 72x128 with share 1.
    """
    phases = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        head, _, share = part.partition(":")
        stage, _, size = head.partition("@")
        if stage.strip() not in ("1", "2", "3"):
            raise InputError(f"stage must be 1, 2 or 3 in schedule part {part!r} (e.g. '3@72x128:0.8')")
        h, w = parse_size(size) if size else (72, 128)
        try:
            s = float(share) if share else 1.0
        except ValueError:
            raise InputError(f"share must be a number in schedule part {part!r}") from None
        if s <= 0:
            raise InputError(f"share must be > 0 in schedule part {part!r}")
        phases.append(Phase(int(stage), h, w, s))
    if not phases:
        raise InputError("empty schedule; e.g. '3@72x128:1'")
    total = sum(p.share for p in phases)
    for p in phases:
        p.share /= total
    return phases


FRESH_SIGMA_SHIFT = 3.0  # training noise shift from scratch (the first sessions' setting)


@dataclass
class TrainConfig:
    out: str
    resume: str | None = None  # a training folder (exact resume) or a model folder (weights)
    preset: str = "default"  # model preset when not resuming
    reference_inputs: bool | None = None  # fresh start: override the preset's flag (None: keep it)
    residual: bool | None = None  # fresh start: override the preset's residual flow flag
    # fresh start: override the preset's anchor (0, 0) input; resume: True widens a model without
    # it (zero new channels: outputs unchanged at the start), False refuses a model with it
    anchor_input: bool | None = None
    # the same for the warp input (row 0 carried into each view by optical flow; pixel models)
    warp_input: bool | None = None
    layers: int | None = None  # blocks of the transformer: a fresh start's depth, or a resume grows to it
    minutes: float = 18.0  # wall-clock budget of the session's loop (steps, curve points, saves)
    max_steps: int | None = None  # stop earlier after this many steps in this session
    schedule: str = DEFAULT_SCHEDULE
    batch: int = 16  # grids per step at 72x128; scaled up with smaller frames (same tokens)
    max_batch: int = 64
    views: int = 8
    times: int = 8
    mode: str = "soft"  # stream mode trained; a comma list alternates steps ("soft,fused"), first = main
    lr: float = 5e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 200
    lr_schedule: str = "cosine"  # or "constant"
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    # the EMA of a resume from a model folder's weights (saved weights are themselves the EMA):
    # "fresh" starts a new average with the usual warm-up, so for the first few hundred steps it
    # follows the raw weights closely; "warm" takes the loaded weights as an average already
    # warmed up, so it moves at ``ema_decay`` from the first step (an exact resume restores its own)
    ema_start: str = "fresh"
    # time shift of the training noise levels; None: the model's own sampling shift (its
    # ``config.shift``) when resuming, FRESH_SIGMA_SHIFT from scratch. Training where the sampler
    # spends its steps matters: at shift 9 half of the 25 steps run above sigma 0.9, where shift 3
    # put 14 % of the training samples (and 5 % of the loss weight).
    sigma_shift: float | None = None
    sigma_mean: float = 0.0
    sigma_std: float = 1.0
    text_drop: float = 0.1
    masks: str = "row0+col0:0.7,cell0:0.1,none:0.1,col0:0.1"
    device: str = "cpu"
    bf16: bool = True  # autocast on CUDA
    compile: bool = False
    compile_min_minutes: float = 2.0  # phases shorter than this run eagerly even with compile
    seed: int = 0
    save_every_min: float = 3.0
    eval_every_min: float = 3.0
    eval_scenes: int = 4
    eval_steps: int = 10
    eval_size: str = "72x128"
    log_every: int = 20
    workers: int = 0  # scene-planning worker processes (4 on a GPU machine)
    reuse: float = 1.0  # stages 2-3: each rendered grid used ~reuse times (replay pool); 1 = never, 0 = auto
    pool_grids: int = 512  # replay pool size in 8x8 grids at the model's size (scaled by pixels)
    render_share: float = 0.5  # reuse auto: render fresh grids for about this share of a step's time
    extra: dict = field(default_factory=dict)

    def modes(self) -> list[str]:
        return [m.strip() for m in self.mode.split(",") if m.strip()] or ["soft"]

    def phases(self) -> list[Phase]:
        return parse_schedule(self.schedule)

    def to_dict(self) -> dict:
        return asdict(self)
