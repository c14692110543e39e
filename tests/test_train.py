"""Trainer guarantees that need real processes: exact resume after SIGKILL, clean stop on SIGINT/SIGTERM (exit 75),
NaN stop with the last good checkpoint intact, refusing to overwrite a run, and 2-process DDP == 1 process.

Everything runs on a tiny synthetic GoPro-layout dataset (written here as PNGs) with a tiny model
(n_blocks=1, nf=8, gc=4, patch 32, batch 2 or 4), so the file takes about a minute on 2 CPU cores."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy.ndimage import uniform_filter1d
from skimage import data as skdata
from skimage import io as skio
from skimage.transform import resize

from dbgan_nb.models import load_generator
from dbgan_nb.train import train_cli

# The trainer reads no environment variables; this launcher turns two of its own into TrainHooks callbacks:
# TEST_PAUSE_AFTER_STEP=k waits after step k (marker file out/.paused) until a signal arrives, and
# TEST_NAN_AT=step:network:term turns that loss term (and the total) into NaN.
LAUNCHER = """
import os, sys, time
from dbgan_nb.train import TrainHooks, train_cli

def pause(trainer, step, stop):
    if os.environ.get("TEST_PAUSE_AFTER_STEP") != str(step): return
    (trainer.out / ".paused").write_text(str(step))
    while not stop.requested: time.sleep(0.02)

def poison(terms, step, network):
    spec = os.environ.get("TEST_NAN_AT", "")
    if not spec: return terms
    k, net, term = spec.split(":")
    if int(k) != step or net != network: return terms
    terms = dict(terms)
    terms[term] = terms[term] * float("nan")
    if term != "total": terms["total"] = terms["total"] + terms[term]
    return terms

sys.exit(train_cli(sys.argv[1:], hooks=TrainHooks(on_losses=poison, after_step=pause)))
"""
TIME_COLUMNS = ["sec_per_step"]
# Tiny models gain nothing from threads, and OpenMP threads that spin-wait on a busy 2-core machine make each step
# 50x slower: every trainer process here uses one thread.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def _save_png(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    skio.imsave(path, img, check_contrast=False)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    "Tiny native-layout dataset (4 train sequences x 3 frames of 64x64, 4 real blurred photos) and a launcher script."
    root = tmp_path_factory.mktemp("train")
    rng = np.random.default_rng(0)
    photo = (resize(skdata.astronaut(), (192, 192), anti_aliasing=True) * 255).round().astype(np.uint8)
    def crop() -> np.ndarray:
        y, x = rng.integers(0, 192 - 64, 2)
        return photo[y:y + 64, x:x + 64]
    for seq in ("SEQ_A", "SEQ_B", "SEQ_C", "SEQ_D"):
        for k in range(3):
            sharp = crop()
            blur = uniform_filter1d(sharp.astype(np.float64), 7, axis=k % 2).round().astype(np.uint8)  # box motion blur
            _save_png(root / "data" / "train" / seq / "sharp" / f"{k:06d}.png", sharp)
            _save_png(root / "data" / "train" / seq / "blur" / f"{k:06d}.png", blur)
    for k in range(4):
        _save_png(root / "data" / "real_blur" / f"{k:03d}.png",
                  uniform_filter1d(crop().astype(np.float64), 5, axis=k % 2).round().astype(np.uint8))
    (root / "launch.py").write_text(LAUNCHER)
    return root


def config(work: Path, out: str, **kw) -> dict:
    "Settings of a tiny, fast, offline run."
    d = dict(data_root=str(work / "data"), val_sequences=1, n_blocks=1, nf=8, gc=4, d_nf=8, patch=32, batch=2,
             iterations=6, perceptual_weights="random", perceptual_layer="conv2_2", lr=1e-3, lr_min=1e-5,
             log_every=1, val_every=3, checkpoint_every=3, val_crop=32, tensorboard=False, threads=1, out=str(work / out))
    d.update(kw)
    return d


def write_config(work: Path, name: str, d: dict) -> Path:
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def cli(work: Path, *args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    "Run dbgan-train in a fresh process."
    return subprocess.run([sys.executable, str(work / "launch.py"), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **ONE_THREAD, **(env or {})})


def start(work: Path, *args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(work / "launch.py"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **ONE_THREAD, **env})


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 90) -> None:
    t0 = time.time()
    while not path.exists():
        if proc.poll() is not None: raise AssertionError(f"trainer exited early ({proc.returncode}): {proc.stderr.read()}")
        if time.time() - t0 > timeout: proc.kill(); raise AssertionError(f"timed out waiting for {path}")
        time.sleep(0.05)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)  # the guarantee under test: no pickle needed


def assert_same_tensors(a, b, where: str = "") -> None:
    "Recursively compare checkpoint entries bit for bit."
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a: assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)): assert_same_tensors(x, y, f"{where}[{i}]")
    elif torch.is_tensor(a):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), f"tensors differ at {where}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_run(run_a: Path, run_b: Path) -> None:
    "Identical weights, optimiser/scheduler states and metrics rows (except timings)."
    a, b = load(run_a / "last.pt"), load(run_b / "last.pt")
    for key in ("step", "generator", "discriminator", "optimizer_g", "optimizer_d", "scheduler_g", "scheduler_d", "data", "best"):
        assert_same_tensors(a[key], b[key], key)
    ma, mb = (pd.read_csv(r / "metrics.csv").drop(columns=TIME_COLUMNS) for r in (run_a, run_b))
    pd.testing.assert_frame_equal(ma, mb, check_exact=True)
    pd.testing.assert_frame_equal(pd.read_csv(run_a / "val.csv"), pd.read_csv(run_b / "val.csv"), check_exact=True)


@pytest.fixture(scope="module")
def bgan_run(work: Path) -> Path:
    "A tiny trained BGAN for the DBGAN runs (through the CLI with --set overrides)."
    cfg = write_config(work, "bgan", config(work, "bgan_run", iterations=4))
    r = cli(work, "bgan", "--config", str(cfg), "--set", "seed=3", "lr_schedule=constant")
    assert r.returncode == 0, r.stderr
    run = work / "bgan_run"
    assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == 3
    assert len(pd.read_csv(run / "metrics.csv")) == 4
    return run


@pytest.fixture(scope="module")
def reference_dbgan(work: Path, bgan_run: Path) -> tuple[dict, Path]:
    "DBGAN on BGAN-made pairs mixed half-and-half with real pairs, 6 steps uninterrupted."
    d = config(work, "dbgan_ref", source="bgan", bgan_checkpoint=str(bgan_run / "last.pt"), real_ratio=0.5)
    r = cli(work, "dbgan", "--config", str(write_config(work, "dbgan_ref", d)))
    assert r.returncode == 0, r.stderr
    return d, work / "dbgan_ref"


def test_sigkill_then_resume_is_bit_exact(work, reference_dbgan):
    d, ref = reference_dbgan
    d = {**d, "out": str(work / "dbgan_killed")}
    cfg = write_config(work, "dbgan_killed", d)
    # the test hook makes the trainer wait after step 4 (checkpoint at 3, rows up to 4 written) until we kill it
    proc = start(work, "dbgan", "--config", str(cfg), env={"TEST_PAUSE_AFTER_STEP": "4"})
    wait_for(work / "dbgan_killed" / ".paused", proc)
    proc.send_signal(signal.SIGKILL); proc.wait(timeout=30)
    run = work / "dbgan_killed"
    assert load(run / "last.pt")["step"] == 3
    assert pd.read_csv(run / "metrics.csv")["step"].tolist() == [1, 2, 3, 4]
    r = cli(work, "dbgan", "--config", str(cfg), "--resume")
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr and "from step 3" in r.stderr
    assert_same_run(ref, run)
    assert not [p for p in run.iterdir() if ".tmp" in p.name]  # no temporary checkpoint left behind
    # both checkpoints open with weights_only=True and rebuild the generator
    for name in ("last.pt", "best.pt"):
        g = load_generator(run / name)
        assert type(g).__name__ == "DBGANGenerator" and not g.training


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_finishes_step_saves_and_exits_75(work, reference_dbgan, sig):
    d, ref = reference_dbgan
    name = f"dbgan_{signal.Signals(sig).name}"
    cfg = write_config(work, name, {**d, "out": str(work / name), "checkpoint_every": 100})
    proc = start(work, "dbgan", "--config", str(cfg), env={"TEST_PAUSE_AFTER_STEP": "2"})
    wait_for(work / name / ".paused", proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err  # stopped before its end: --resume goes on
    assert "stopped after step 2" in err and f"dbgan-train dbgan --config {work / name / 'config.yaml'} --resume" in err
    assert load(work / name / "last.pt")["step"] == 2
    if sig == signal.SIGTERM:  # resuming from the signal checkpoint reproduces the uninterrupted run
        r = cli(work, "dbgan", "--config", str(work / name / "config.yaml"), "--resume")
        assert r.returncode == 0, r.stderr
        assert_same_run(ref, work / name)


def test_nan_loss_stops_with_named_step_and_term(work, reference_dbgan):
    d, _ = reference_dbgan
    cfg = write_config(work, "dbgan_nan", {**d, "out": str(work / "dbgan_nan")})
    r = cli(work, "dbgan", "--config", str(cfg), env={"TEST_NAN_AT": "5:generator:perceptual"})
    assert r.returncode == 1
    assert "non-finite generator loss at step 5: term 'perceptual' = nan" in r.stderr, r.stderr
    assert "last good checkpoint" in r.stderr and "(step 3)" in r.stderr
    ck = load(work / "dbgan_nan" / "last.pt")
    assert ck["step"] == 3
    assert all(torch.isfinite(v).all() for v in ck["generator"]["state_dict"].values())
    assert load_generator(work / "dbgan_nan" / "last.pt") is not None
    assert pd.read_csv(work / "dbgan_nan" / "metrics.csv")["step"].tolist() == [1, 2, 3, 4]
    r = cli(work, "dbgan", "--config", str(cfg), env={"TEST_NAN_AT": "2:discriminator:total"}, timeout=60)
    assert r.returncode == 2 and "already holds" in r.stderr  # and the failed run is not silently overwritten


def test_existing_run_is_refused_unless_resume_or_force(work, bgan_run, capsys):
    cfg = work / "bgan_run" / "config.yaml"
    assert train_cli(["bgan", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "already holds a bgan run" in err and "--resume" in err and "--force" in err
    assert train_cli(["dbgan", "--config", str(cfg), "--resume", "--set", "source=real"]) == 2
    assert "holds a bgan run" in capsys.readouterr().err
    assert train_cli(["bgan", "--config", str(cfg), "--resume", "--set", "lr=0.5"]) == 2
    assert "cannot resume with different settings: lr (saved 0.001, now 0.5)" in capsys.readouterr().err
    assert train_cli(["bgan", "--config", str(cfg), "--resume"]) == 0        # already finished: nothing to do
    assert "nothing to do" in capsys.readouterr().out
    copy = work / "bgan_forced"
    shutil.copytree(bgan_run, copy)
    assert train_cli(["bgan", "--config", str(cfg), "--set", f"out={copy}", "iterations=2", "--force"]) == 0
    assert pd.read_csv(copy / "metrics.csv")["step"].tolist() == [1, 2]
    assert train_cli(["bgan", "--config", str(cfg), "--set", "lrr=1"]) == 2
    assert "unknown config key(s) 'lrr' (did you mean 'lr'?)" in capsys.readouterr().err


def first_step_gradients(ck: dict, opt: str) -> list[torch.Tensor]:
    "Gradients of step 1 recovered from Adam's first moment (exp_avg = (1 - beta1) * g after one step)."
    state = ck[opt]["state"]
    return [state[k]["exp_avg"] / 0.1 for k in sorted(state)]


def test_two_processes_match_one(work, bgan_run):
    """torchrun, 2 Gloo processes x 2 samples == 1 process x 4 samples (same global batch).

    Stated tolerances. Step 1: losses within 1e-5 relative and every gradient within 1e-4 of the network's largest
    gradient -- only the summation order differs. Steps 2-4: losses within 1e-2 relative, because Adam divides each
    gradient element by its own magnitude and so turns rounding noise in elements whose true gradient is 0 into
    +-lr updates (e.g. the discriminator's last bias: relativistic losses are invariant to shifting all scores)."""
    # init_std 0.1 (not the paper's 0.01) so that discriminator scores are far from 0 and the relativistic batch means matter
    d = config(work, "ddp1", source="bgan", bgan_checkpoint=str(bgan_run / "last.pt"), real_ratio=0.5, batch=4,
               iterations=4, checkpoint_every=4, keep_every=1, val_every=4, init_std=0.1)
    r = cli(work, "dbgan", "--config", str(write_config(work, "ddp1", d)))
    assert r.returncode == 0, r.stderr
    cfg2 = write_config(work, "ddp2", {**d, "out": str(work / "ddp2")})
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(work / "launch.py")]
    r = subprocess.run([*torchrun, "dbgan", "--config", str(cfg2)], capture_output=True, text=True, timeout=150,
                       env={**os.environ, **ONE_THREAD})
    assert r.returncode == 0, r.stderr
    step1, step1_ddp = (load(work / n / "step_0000001.pt") for n in ("ddp1", "ddp2"))
    for opt in ("optimizer_g", "optimizer_d"):
        one, two = first_step_gradients(step1, opt), first_step_gradients(step1_ddp, opt)
        scale = max(g.abs().max() for g in one)
        assert scale > 0
        assert max((a - b).abs().max() for a, b in zip(one, two)) <= 1e-4 * scale, opt
    one, two = (pd.read_csv(work / n / "metrics.csv").drop(columns=TIME_COLUMNS) for n in ("ddp1", "ddp2"))
    assert one["step"].tolist() == two["step"].tolist() == [1, 2, 3, 4]   # one writer: no duplicated rows
    np.testing.assert_allclose(two.iloc[0].to_numpy(), one.iloc[0].to_numpy(), rtol=1e-5, atol=1e-8)
    losses = ["g_total", "g_perceptual", "g_content", "g_adversarial", "d_total"]
    np.testing.assert_allclose(two[losses].to_numpy(), one[losses].to_numpy(), rtol=1e-2)
    snapshots = [f"step_{k:07d}.pt" for k in range(1, 5)]
    assert sorted(p.name for p in (work / "ddp2").iterdir()) == ["best.pt", "config.yaml", "last.pt", "metrics.csv", *snapshots, "val.csv"]


def paper_mode(work: Path, out: str) -> list[str]:
    "dbgan-train arguments for the paper's DBGAN (TrainConfig defaults: arch rrdb as in paper mode), shrunk to run in seconds."
    return ["dbgan", "--out", str(work / out), "--device", "cpu", "--quiet", "--set", f"data_root={work / 'data'}",
            "val_sequences=1", "source=real", "arch=rrdb", "n_blocks=1", "nf=8", "gc=4", "d_nf=8", "patch=32", "batch=2",
            "iterations=6", "perceptual_weights=random", "perceptual_layer=conv1_2", "val_every=100", "val_crop=32",
            "checkpoint_every=1000", "checkpoint_minutes=1e-9", "threads=1", "tensorboard=false"]


def test_killed_paper_run_resumes_from_previous_when_last_is_truncated(work, tmp_path):
    """A long run loses minutes, not days: checkpoints by time as well as by step, the previous one kept beside the
    newest, and --resume falling back to it (naming both files) when the newest is unreadable."""
    ref = cli(work, *paper_mode(work, "paper_ref"))
    assert ref.returncode == 0, ref.stderr
    proc = start(work, *paper_mode(work, "paper_killed"), env={"TEST_PAUSE_AFTER_STEP": "4"})
    run = work / "paper_killed"
    wait_for(run / ".paused", proc)
    proc.send_signal(signal.SIGKILL); proc.wait(timeout=30)
    # checkpoint_minutes ~ 0: a checkpoint after every step although checkpoint_every is 1000 (the pause comes before
    # step 4's checkpoint, so the newest is step 3's)
    assert (load(run / "last.pt")["step"], load(run / "previous.pt")["step"]) == (3, 2)
    (run / "last.pt").write_bytes((run / "last.pt").read_bytes()[:1000])  # a truncated copy of the newest checkpoint
    r = cli(work, *paper_mode(work, "paper_killed"), "--resume")
    assert r.returncode == 0, r.stderr
    assert f"{run / 'last.pt'}" in r.stderr and f"{run / 'previous.pt'}" in r.stderr and "step 2" in r.stderr, r.stderr
    assert "resuming" in r.stderr and "from step 2 (previous.pt)" in r.stderr, r.stderr
    assert_same_run(work / "paper_ref", run)
    # the released topology, trained: dbgan-deblur loads the checkpoint
    from dbgan_nb.inference import deblur_cli
    photo = (resize(skdata.astronaut()[:64, :64], (40, 48), anti_aliasing=True) * 255).round().astype(np.uint8)
    _save_png(tmp_path / "in" / "photo.png", photo)
    assert deblur_cli([str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--weights", str(run / "last.pt"), "--quiet",
                       "--device", "cpu"]) == 0
    assert skio.imread(tmp_path / "out" / "photo.png").shape == (40, 48, 3)
    assert type(load_generator(run / "last.pt")).__name__ == "ReleaseGenerator"
