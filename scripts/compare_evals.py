"""Are new weights measurably better than old ones? A paired comparison of two eval results.

    python scripts/compare_evals.py OLD.json NEW.json [--row "parallel soft trained"]

Both files come from ``python launch.py eval ... --json`` on the same evaluation seeds (same
count, size, steps and mode), one per model. Each scene is scored by both models, so the
comparison is made scene by scene: the mean of the per-scene PSNR differences (NEW - OLD), how many
scenes went up and down, an exact two-sided sign test, and a bootstrap 95 % interval of the mean
difference (10,000 resamples of the scenes, fixed seed). The verdict is "better" when the interval
lies above zero and the sign test gives p < 0.05, "worse" in the mirror case, else "not measurably
different". Eight scenes rarely decide anything (one scene can move the mean by 0.1 dB); 64 do.

Exit status: 0 after printing, 2 for files that cannot be compared (missing, not eval results,
other seeds or settings, no such row).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

ROW = "parallel soft trained"
SETTINGS = ("views", "times", "height", "width", "steps")


class CompareError(ValueError):
    pass


def _load(path: str, row: str) -> tuple[dict, np.ndarray]:
    p = Path(path)
    try:
        d = json.loads(p.read_text())
    except FileNotFoundError:
        raise CompareError(f"{path}: no such file (give two results of 'launch.py eval --json')")
    except (OSError, ValueError) as e:
        raise CompareError(f"{path}: not a readable JSON file ({e})")
    if not isinstance(d, dict) or "rows" not in d or "seeds" not in d:
        raise CompareError(f"{path}: not a result of 'launch.py eval --json' (it has no 'rows' and 'seeds')")
    names = [r.get("row") for r in d["rows"]]
    rows = [r for r in d["rows"] if r.get("row") == row]
    if not rows:
        raise CompareError(f"{path}: no row '{row}'; it has: {', '.join(str(n) for n in names)}")
    per = rows[0].get("psnr_per_scene") or []
    if len(per) != len(d["seeds"]):
        raise CompareError(f"{path}: row '{row}' has {len(per)} per-scene PSNRs for {len(d['seeds'])} seeds")
    return d, np.asarray(per, dtype=np.float64)


def sign_test_p(up: int, down: int) -> float:
    """Exact two-sided binomial p-value of ``up`` successes in ``up + down`` fair trials (ties dropped)."""
    n = up + down
    if n == 0:
        return 1.0
    k = min(up, down)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


def compare(old: np.ndarray, new: np.ndarray, resamples: int = 10000, seed: int = 0) -> dict:
    """Paired statistics of per-scene scores ``new - old`` (same scenes, same order)."""
    d = np.asarray(new, np.float64) - np.asarray(old, np.float64)
    up, down = int((d > 0).sum()), int((d < 0).sum())
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    lo, hi = (float(x) for x in np.percentile(means, [2.5, 97.5]))
    p = sign_test_p(up, down)
    if lo > 0 and p < 0.05 and up > down:
        verdict = "better"
    elif hi < 0 and p < 0.05 and down > up:
        verdict = "worse"
    else:
        verdict = "not measurably different"
    return {"scenes": len(d), "old_mean": float(np.mean(old)), "new_mean": float(np.mean(new)),
            "mean_diff": float(d.mean()), "up": up, "down": down, "ties": len(d) - up - down,
            "ci95": [lo, hi], "sign_p": p, "worst": float(d.min()), "best": float(d.max()), "verdict": verdict}


def _info(res: dict) -> dict:
    return res.get("model_info") if isinstance(res.get("model_info"), dict) else {}


def _label(res: dict) -> str:
    """The weights a result scored: the folder as it was named then and, where the eval recorded
    it, the weights' hash (a folder such as a training run's holds other weights later)."""
    h = _info(res).get("hash")
    return f"{res.get('model')}, hash {h}" if h else f"{res.get('model')}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old", help="eval JSON of the weights in use")
    ap.add_argument("new", help="eval JSON of the candidate weights")
    ap.add_argument("--row", default=ROW, help=f"which row of the eval to compare (default '{ROW}')")
    ap.add_argument("--json", help="also write the statistics here")
    args = ap.parse_args(argv)
    try:
        a, pa = _load(args.old, args.row)
        b, pb = _load(args.new, args.row)
        if list(a["seeds"]) != list(b["seeds"]):
            raise CompareError(f"the two results scored different scenes ({len(a['seeds'])} seeds from "
                               f"{a['seeds'][0] if a['seeds'] else '-'} against {len(b['seeds'])} from "
                               f"{b['seeds'][0] if b['seeds'] else '-'}); run both evals with the same --seeds")
        sa, sb = a.get("settings") or {}, b.get("settings") or {}
        diff = [k for k in SETTINGS if sa.get(k) != sb.get(k)]
        if diff:
            raise CompareError("the two results differ in " + ", ".join(f"{k} ({sa.get(k)} against {sb.get(k)})" for k in diff)
                               + "; compare evals made with the same settings")
        if not len(pa):
            raise CompareError("no scenes to compare")
    except CompareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    s = compare(pa, pb)
    print(f"{args.row}, {s['scenes']} scenes (seeds {a['seeds'][0]}..{a['seeds'][-1]}): "
          f"old {s['old_mean']:.2f} dB ({_label(a)}), new {s['new_mean']:.2f} dB ({_label(b)})")
    ha, hb = (_info(r).get("hash") for r in (a, b))
    if ha and ha == hb:
        print(f"note: both results are of the same weights (hash {ha})")
    da, db = (_info(r).get("device") or r.get("device") for r in (a, b))
    if da and db and da != db:
        print(f"note: scored on {da} and on {db}; the devices round differently, so one model scores slightly apart on them")
    print(f"new - old: {s['mean_diff']:+.3f} dB (95% interval {s['ci95'][0]:+.3f} .. {s['ci95'][1]:+.3f}; "
          f"scenes {s['worst']:+.2f} .. {s['best']:+.2f}), {s['up']} scenes up, {s['down']} down, {s['ties']} equal, "
          f"sign test p = {s['sign_p']:.2g}")
    print(f"verdict: {s['verdict']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"row": args.row, "old": args.old, "new": args.new, **s}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
