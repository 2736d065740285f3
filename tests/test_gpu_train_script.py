"""scripts/gpu_train.sh's hand-back commands on a stand-in training folder: ``snapshot`` copies the
last checkpoint and leaves training running, ``collect`` stops it first, and a checkpoint caught
in its swap (only ``model.old`` there) is still handed back."""

import json
import shutil
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_train.sh"


def _stand_in(tmp_path: Path, folder: str = "model") -> tuple[Path, subprocess.Popen]:
    """A training dir whose run has a checkpoint in ``run/<folder>`` and a live 'training' process."""
    d = tmp_path / "train"
    model = d / "run" / folder
    (model / "transformer").mkdir(parents=True)
    (model / "transformer" / "config.json").write_text(json.dumps({"num_layers": 2}))
    (model / "fourd.json").write_text(json.dumps({"name": "stand-in"}))
    (d / "run" / "learning_curve.json").write_text(json.dumps({"points": [{"step": 1, "psnr": 20.0}]}))
    (d / "run" / "samples").mkdir()
    (d / "run" / "samples" / "step_000001.png").write_bytes(b"png")
    (d / "train.log").write_text("step 1  loss 0.1\n")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    threading.Thread(target=proc.wait, daemon=True).start()  # reaped at once when stopped, as a real run's parent does
    (d / "train.pid").write_text(str(proc.pid))
    return d, proc


def _run(d: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env={"PATH": "/usr/bin:/bin", "TRAIN_DIR": str(d)},
                          capture_output=True, text=True, timeout=60)


def _names(tar: Path) -> set[str]:
    with tarfile.open(tar) as t:
        return set(t.getnames())


def test_snapshot_copies_the_checkpoint_and_leaves_training_running(tmp_path):
    d, proc = _stand_in(tmp_path)
    try:
        out = tmp_path / "out"
        r = _run(d, "snapshot", str(out))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "model/transformer/config.json" in _names(out / "model.tar")
        assert json.loads((out / "learning_curve.json").read_text())["points"][0]["psnr"] == 20.0
        assert (out / "sample.png").read_bytes() == b"png"
        assert "step 1  loss 0.1" in (out / "report.txt").read_text()
        assert proc.poll() is None  # still training
        assert not (d / "skip-eval").exists()
    finally:
        proc.kill()
        proc.wait()


def test_collect_stops_training_first(tmp_path):
    d, proc = _stand_in(tmp_path)
    try:
        out = tmp_path / "out"
        r = _run(d, "collect", str(out))
        assert r.returncode == 0, r.stdout + r.stderr
        assert proc.wait(timeout=10) is not None  # stopped (by the script, before it packed)
        assert (d / "skip-eval").exists()  # no eval after a stopped run
        assert "model/fourd.json" in _names(out / "model.tar")
    finally:
        proc.kill()
        proc.wait()


def test_snapshot_during_a_swap_hands_back_model_old(tmp_path):
    d, proc = _stand_in(tmp_path, folder="model.old")
    try:
        out = tmp_path / "out"
        r = _run(d, "snapshot", str(out))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "model/transformer/config.json" in _names(out / "model.tar")  # renamed to model/
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("cmd", ["snapshot", "collect"])
def test_no_checkpoint_is_a_clear_failure(tmp_path, cmd):
    d = tmp_path / "train"
    (d / "run").mkdir(parents=True)
    r = _run(d, cmd, str(tmp_path / "out"))
    assert r.returncode != 0
    assert "no model folder" in r.stdout
    assert not (tmp_path / "out" / "model.tar").exists()


def _checkout_with_deeper_weights(tmp_path: Path) -> tuple[Path, int]:
    """A stand-in checkout: the real script and core/, and assets/model holding trained weights one
    block deeper than the default preset."""
    import dataclasses

    from core.model.config import preset
    from core.model.pipeline import FourDModel

    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    (root / "scripts" / "gpu_train.sh").write_text(SCRIPT.read_text())
    (root / "core").symlink_to(ROOT / "core")
    base = preset("default")
    depth = base.backbone["num_layers"] + 1
    cfg = dataclasses.replace(base, backbone={**base.backbone, "num_layers": depth})
    FourDModel.from_config(cfg).save_pretrained(root / "assets" / "model")
    (root / "assets" / "model" / "training.json").write_text("{}")
    # 'python' here runs the script's shape checks for real and only records the launch.py calls
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/bash\nif [ "$1" = -c ]; then exec {sys.executable} "$@"; fi\n'
                    f'echo "$@" >> {tmp_path}/calls; sleep 1\n')
    fake.chmod(0o755)
    return root, depth


def _start(root: Path, tmp_path: Path, *args: str, **env_extra: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "TRAIN_DIR": str(tmp_path / "train"), "PYTHON": str(tmp_path / "python"),
           "PYTHONPATH": str(ROOT), "DEVICE": "cpu", "COMPILE": "0", **env_extra}
    return subprocess.run(["bash", str(root / "scripts" / "gpu_train.sh"), "start", "1", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_start_refuses_weights_that_do_not_fit_instead_of_training_from_scratch(tmp_path):
    root, depth = _checkout_with_deeper_weights(tmp_path)
    r = _start(root, tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "nothing started" in r.stdout and "--layers N" in r.stdout
    assert not (tmp_path / "train" / "job.pid").exists() and not (tmp_path / "calls").exists()


def test_start_resumes_deeper_weights_at_the_depth_asked_for(tmp_path):
    root, depth = _checkout_with_deeper_weights(tmp_path)
    r = _start(root, tmp_path, "--layers", str(depth))
    assert r.returncode == 0, r.stdout + r.stderr
    cmd = (tmp_path / "train" / "train.cmd").read_text()
    assert "--resume assets/model" in cmd and "--stage 3" in cmd and f"--layers {depth}" in cmd
    assert "--preset" not in cmd


def test_start_with_compare_plans_a_paired_check_against_the_starting_weights(tmp_path):
    root, depth = _checkout_with_deeper_weights(tmp_path)
    r = _start(root, tmp_path, "--layers", str(depth), COMPARE="64")
    assert r.returncode == 0, r.stdout + r.stderr
    train = tmp_path / "train"
    # the starting weights are kept as they were before training touches anything
    start = train / "start_model" / "transformer" / "diffusion_pytorch_model.safetensors"
    assert start.read_bytes() == (root / "assets" / "model" / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes()
    cmds = (train / "compare.cmd").read_text().splitlines()
    assert len(cmds) == 3
    assert f"--model {train / 'start_model'} --seeds 64 --device cpu --modes soft --no-consistency" in cmds[0]
    assert f"--model {train / 'run' / 'model'} --seeds 64" in cmds[1]
    assert cmds[2].endswith(f"scripts/compare_evals.py {train / 'compare_old.json'} {train / 'compare_new.json'}")


def test_start_without_compare_plans_none_and_a_bad_count_is_refused(tmp_path):
    root, depth = _checkout_with_deeper_weights(tmp_path)
    r = _start(root, tmp_path, "--layers", str(depth))
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (tmp_path / "train" / "compare.cmd").exists() and not (tmp_path / "train" / "start_model").exists()
    r = _start(root, tmp_path, "--layers", str(depth), COMPARE="many")
    assert r.returncode == 2 and "COMPARE must be a number" in r.stdout


def _checkout_with_a_fake_trainer(tmp_path: Path, train_seconds: float) -> Path:
    """A stand-in checkout whose 'python' fakes a training run: 'launch.py train --out RUN ...' sleeps,
    then writes a checkpoint into RUN/model; every other launch.py call is only recorded."""
    root, _ = _checkout_with_deeper_weights(tmp_path)
    fake = tmp_path / "python"
    fake.write_text(
        f'#!/bin/bash\nif [ "$1" = -c ]; then exec {sys.executable} "$@"; fi\n'
        f'echo "$@" >> {tmp_path}/calls\n'
        'if [ "$2" = train ]; then\n'
        f'  sleep {train_seconds}; mkdir -p "$4/model/transformer"; echo "{{}}" > "$4/model/transformer/config.json"\n'
        '  echo "step 9  loss 0.05" \nfi\n')
    fake.chmod(0o755)
    return root


def _script(root: Path, tmp_path: Path, *args: str, **env_extra: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "TRAIN_DIR": str(tmp_path / "train"), "PYTHON": str(tmp_path / "python"),
           "PYTHONPATH": str(ROOT), "DEVICE": "cpu", "COMPILE": "0", **env_extra}
    return subprocess.run(["bash", str(root / "scripts" / "gpu_train.sh"), *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_run_trains_scores_and_hands_back_in_one_call(tmp_path):
    root = _checkout_with_a_fake_trainer(tmp_path, train_seconds=1)
    out = tmp_path / "out"
    r = _script(root, tmp_path, "run", "1", str(out), "--layers", "9")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "the job ended after" in r.stdout
    assert "model/transformer/config.json" in _names(out / "model.tar")
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[0].startswith("launch.py train --out") and "--resume assets/model" in calls[0]
    assert calls[1].startswith("launch.py eval --model")  # scored after training, before handing back
    assert "train exit: 0" in (out / "report.txt").read_text()


def test_wait_stops_at_its_deadline_with_the_last_checkpoint(tmp_path):
    root = _checkout_with_a_fake_trainer(tmp_path, train_seconds=30)
    train = tmp_path / "train"
    r = _script(root, tmp_path, "start", "1", "--layers", "9")
    assert r.returncode == 0, r.stdout + r.stderr
    # a checkpoint from earlier in the run, as training saves every few minutes
    (train / "run" / "model" / "transformer").mkdir(parents=True)
    (train / "run" / "model" / "transformer" / "config.json").write_text("{}")
    try:
        out = tmp_path / "out"
        r = _script(root, tmp_path, "wait", str(out), DEADLINE="2")
        assert r.returncode == 3, r.stdout + r.stderr
        assert "still runs after 2 s" in r.stdout
        assert "model/transformer/config.json" in _names(out / "model.tar")
        assert "training: running" in r.stdout  # left running for the next call
    finally:
        subprocess.run(["kill", "--", f"-{(train / 'job.pid').read_text().strip()}"], capture_output=True)


def test_wait_without_a_job_is_a_clear_failure(tmp_path):
    root = _checkout_with_a_fake_trainer(tmp_path, train_seconds=1)
    r = _script(root, tmp_path, "wait", str(tmp_path / "out"))
    assert r.returncode == 2 and "no job started" in r.stdout


def test_start_resumes_kept_weights_and_compares_with_the_shipped_ones(tmp_path):
    root, depth = _checkout_with_deeper_weights(tmp_path)
    kept = root / ".ckpt" / "model"
    shutil.copytree(root / "assets" / "model", kept)
    shipped = root / "assets" / "model" / "transformer" / "diffusion_pytorch_model.safetensors"
    shipped.write_bytes(shipped.read_bytes()[:-4] + b"\0\0\0\0")  # the two differ
    r = _start(root, tmp_path, "--layers", str(depth), RESUME_FROM=".ckpt/model", COMPARE="64",
               COMPARE_WITH="assets/model")
    assert r.returncode == 0, r.stdout + r.stderr
    train = tmp_path / "train"
    assert "--resume .ckpt/model" in (train / "train.cmd").read_text()
    # the paired check scores the shipped weights, not the kept ones it resumed from
    start = train / "start_model" / "transformer" / "diffusion_pytorch_model.safetensors"
    assert start.read_bytes() == shipped.read_bytes()


def test_start_refuses_a_resume_or_compare_folder_that_holds_no_model(tmp_path):
    root, depth = _checkout_with_deeper_weights(tmp_path)
    r = _start(root, tmp_path, "--layers", str(depth), RESUME_FROM="nowhere")
    assert r.returncode == 2 and "RESUME_FROM=nowhere is not a model folder" in r.stdout
    r = _start(root, tmp_path, "--layers", str(depth), COMPARE="64", COMPARE_WITH="nowhere")
    assert r.returncode == 2 and "COMPARE_WITH=nowhere is not a model folder" in r.stdout
    assert not (tmp_path / "train" / "job.pid").exists()


def test_an_exact_resume_goes_on_at_the_smaller_batch_the_run_last_trained_at(tmp_path):
    root, depth = _checkout_with_deeper_weights(tmp_path)
    run = tmp_path / "train" / "run"
    shutil.copytree(root / "assets" / "model", run / "model")
    (run / "state.pt").write_bytes(b"state")
    # the trainer halved 48 to 24 when the GPU ran out of memory
    (run / "log.jsonl").write_text(json.dumps({"step": 10, "batch": 48}) + "\n" + json.dumps({"step": 20, "batch": 24}) + "\n")
    r = _start(root, tmp_path, "--layers", str(depth), BATCH="48")
    assert r.returncode == 0, r.stdout + r.stderr
    cmd = (tmp_path / "train" / "train.cmd").read_text()
    assert f"--resume {run} " in cmd and "--batch 24 " in cmd
    assert "last trained at batch 24" in r.stdout
    subprocess.run(["kill", "--", f"-{(tmp_path / 'train' / 'job.pid').read_text().strip()}"], capture_output=True)
    # asked for less than the run had, the smaller number stands
    (tmp_path / "train" / "job.pid").unlink()
    r = _start(root, tmp_path, "--layers", str(depth), BATCH="16")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "--batch 16 " in (tmp_path / "train" / "train.cmd").read_text()
    subprocess.run(["kill", "--", f"-{(tmp_path / 'train' / 'job.pid').read_text().strip()}"], capture_output=True)


def test_start_takes_the_shipped_weights_scores_from_an_earlier_run_when_they_match(tmp_path):
    from core.model.pipeline import model_hash

    root, depth = _checkout_with_deeper_weights(tmp_path)
    good = tmp_path / "old64.json"
    good.write_text(json.dumps({"model_info": {"hash": model_hash(root / "assets" / "model")},
                                "seeds": list(range(64))}))
    r = _start(root, tmp_path, "--layers", str(depth), COMPARE="64", COMPARE_WITH="assets/model",
               COMPARE_OLD=str(good))
    assert r.returncode == 0, r.stdout + r.stderr
    cmd = (tmp_path / "train" / "compare.cmd").read_text()
    assert f"cp {good} " in cmd and "start_model" not in cmd  # not scored again
    assert "compare_evals.py" in cmd and "--model " in cmd  # the new weights still are, and compared


@pytest.mark.parametrize("doc, env, message", [
    ({"model_info": {"hash": "0123456789abcdef"}, "seeds": list(range(64))}, {"COMPARE_WITH": "assets/model"},
     "it scored model 0123456789abcdef on 64 scenes"),
    (None, {"COMPARE_WITH": "assets/model"}, "not a readable result"),
    ({}, {}, "needs COMPARE=N and COMPARE_WITH"),
])
def test_start_refuses_earlier_scores_that_cannot_stand_in(tmp_path, doc, env, message):
    root, depth = _checkout_with_deeper_weights(tmp_path)
    old = tmp_path / "old64.json"
    old.write_text("not json" if doc is None else json.dumps(doc))
    r = _start(root, tmp_path, "--layers", str(depth), COMPARE="64", COMPARE_OLD=str(old), **env)
    assert r.returncode == 2 and message in r.stdout, r.stdout + r.stderr
    assert not (tmp_path / "train" / "job.pid").exists()
