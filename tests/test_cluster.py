"""Faults of a cluster, each injected for real, each run compared with an uninterrupted one:

- a worker SIGKILLed from outside at a random step under `torchrun --max-restarts` (2 Gloo processes): the group
  restarts, resumes and finishes by itself with the weights of the run nobody touched (2 repetitions here, 10 with
  DBGAN_SLOW_TESTS=1, so that a failure one restart in three cannot pass);
- a worker that hangs (it sleeps after a step): the collective timeout turns the hang into an error, and
  torchrun restarts the group, which finishes with the same weights;
- SIGUSR1, Slurm's warning ahead of a time limit, at a random step: checkpoint, exit status 75, and `--resume`
  finishes bit-identical to the uninterrupted run;
- a checkpoint write that finds no room (the OSError injected at the write): one error line naming the folder, the
  bytes needed and free and the intact checkpoints, nothing half-written, and `--resume` bit-identical;
- start-up failures (missing ImageNet weights offline, an unreadable image in the data root, a bad setting):
  exit status 2 and one line, the traceback only with --debug or DBGAN_DEBUG=1;
- the Slurm recipe params/slurm_paper.sbatch, run as a job would run it on 2 CPU processes: preempted with SIGUSR1,
  requeued (a stand-in scontrol), and run again to the end.

The tiny dataset, settings and comparisons come from test_train.py."""
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from test_train import ONE_THREAD, assert_same_run, config, load, work, write_config  # noqa: F401 (work is a fixture)

from dbgan_nb.train import train_cli

REPO = Path(__file__).resolve().parent.parent
SLURM_SCRIPT = REPO / "params" / "slurm_paper.sbatch"
SLOW = bool(os.environ.get("DBGAN_SLOW_TESTS"))
RESTART_REPEATS = 10 if SLOW else 2
RNG = random.Random(os.environ.get("DBGAN_TEST_SEED"))  # the steps where faults land; printed with every failure

# dbgan-train with test hooks, chosen by environment variables (the trainer itself reads none):
# TEST_STALL_AT=k: process 1 hangs after step k, in the first group torchrun starts (it sleeps; torchrun's SIGTERM
#   still ends it, so that the test does not wait the 30 s torchrun gives a worker before it sends SIGKILL);
# TEST_DISK_FULL_AT=k: from step k on, every flush to disk fails with ENOSPC (a disk that filled up).
LAUNCHER = """
import errno, os, signal, sys, time
from dbgan_nb.train import TrainHooks, train_cli

def after_step(trainer, step, stop):
    if (os.environ.get("TEST_STALL_AT") == str(step) and trainer.info.rank == 1
            and os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0"):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        time.sleep(3600)
    if os.environ.get("TEST_DISK_FULL_AT") == str(step):
        def full(fd): raise OSError(errno.ENOSPC, "No space left on device")
        os.fsync = full

sys.exit(train_cli(sys.argv[1:], hooks=TrainHooks(after_step=after_step)))
"""


@pytest.fixture(scope="module")
def launcher(work: Path) -> Path:
    path = work / "cluster_launch.py"
    path.write_text(LAUNCHER)
    return path


def run_config(work: Path, name: str, **kw) -> Path:
    "A tiny DBGAN on real pairs (no BGAN needed), 12 steps."
    return write_config(work, name, config(work, name, **{"source": "real", "iterations": 12, "val_every": 6, "checkpoint_every": 4, **kw}))


def torchrun(launcher: Path, cfg: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *options,
            str(launcher), "dbgan", "--config", str(cfg), "--resume", "--quiet"]


def start(command: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    "Start `command` in a session of its own (so that everything it started can be cleaned up), output to `log`."
    with open(log, "w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO,
                                env={**os.environ, **ONE_THREAD, **(env or {})})


def children(pid: int) -> list[int]:
    "Processes whose parent is `pid` (Linux /proc)."
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit(): continue
        try: stat = (entry / "stat").read_text()
        except OSError: continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid: found.append(int(entry.name))
    return found


def logged_step(run: Path) -> int:
    "The last step in run/metrics.csv (0 before the first)."
    try: rows = (run / "metrics.csv").read_text().splitlines()[1:]
    except OSError: return 0
    steps = [int(r.split(",")[0]) for r in rows if r.split(",")[0].isdigit()]
    return steps[-1] if steps else 0


def finish(proc: subprocess.Popen, log: Path, timeout: float, workers: set[int] = frozenset()) -> int:
    "Exit status of `proc`; past `timeout` it and its workers are killed and the test fails (a hang)."
    try: return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in {proc.pid, *workers, *children(proc.pid)}:
            try: os.kill(pid, signal.SIGKILL)
            except ProcessLookupError: pass
        proc.wait()
        raise AssertionError(f"no end after {timeout} s (a hang); log:\n{log.read_text()[-3000:]}")


def kill_at(proc: subprocess.Popen, run: Path, step: int, sig: int, target: str = "worker", timeout: float = 120) -> set[int]:
    "Once run/metrics.csv reaches `step`, send `sig` to one of torchrun's workers (or to `proc` itself); the workers seen."
    seen, t0 = set(), time.time()
    while proc.poll() is None and time.time() - t0 < timeout:
        seen.update(children(proc.pid))
        if logged_step(run) >= step and (target == "self" or children(proc.pid)):
            os.kill(proc.pid if target == "self" else RNG.choice(children(proc.pid)), sig)
            return seen
        time.sleep(0.02)
    raise AssertionError(f"the run never reached step {step} (exit status {proc.poll()}); see the log beside {run}")


def assert_no_leftovers(run: Path) -> None:
    "No temporary or staged file left behind."
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")], sorted(p.name for p in run.iterdir())


# --- torchrun restarts -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def torchrun_reference(work: Path, launcher: Path) -> Path:
    "Two processes, uninterrupted."
    cfg = run_config(work, "torchrun_ref")
    log = work / "torchrun_ref.log"
    assert finish(start(torchrun(launcher, cfg), log), log, 150) == 0, log.read_text()[-3000:]
    return work / "torchrun_ref"


@pytest.mark.parametrize("repetition", [pytest.param(i, marks=pytest.mark.skipif(i >= 2 and not SLOW, reason="DBGAN_SLOW_TESTS=1"))
                                        for i in range(10)])
def test_killed_worker_restarts_and_finishes_identically(work, launcher, torchrun_reference, repetition):
    name = f"torchrun_killed_{repetition}"
    step = RNG.randint(5, 10)  # after the first checkpoint (step 4): the restarted group has one to resume from
    cfg, log = run_config(work, name), work / f"{name}.log"
    proc = start(torchrun(launcher, cfg, "--max-restarts", "1"), log)
    seen = kill_at(proc, work / name, step, signal.SIGKILL)
    code = finish(proc, log, 150, seen)
    text = log.read_text()
    assert code == 0, f"killed at step {step}: exit status {code}\n{text[-3000:]}"
    assert "resuming" in text, text[-3000:]  # the restarted group resumed from a checkpoint (not a run that ended first)
    assert_same_run(torchrun_reference, work / name)
    assert_no_leftovers(work / name)


def test_hung_worker_times_out_and_restarts(work, launcher, torchrun_reference):
    "A worker that stops answering: the other's collective fails after dist_timeout_minutes, torchrun restarts the group."
    name = "torchrun_hung"
    cfg, log = run_config(work, name, dist_timeout_minutes=0.1), work / f"{name}.log"  # 6 seconds
    t0 = time.time()
    proc = start(torchrun(launcher, cfg, "--max-restarts", "1"), log, {"TEST_STALL_AT": "5"})
    code = finish(proc, log, 150)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert re.search(r"[Tt]imed out|timeout", text) and "resuming" in text, text[-3000:]
    assert_same_run(torchrun_reference, work / name)
    print(f"hung worker: finished after {time.time() - t0:.0f} s")


# --- preemption and a full disk (one process) ---------------------------------------------------------------------

def cli(launcher: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(launcher), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **ONE_THREAD, **(env or {})})


@pytest.fixture(scope="module")
def single_reference(work: Path, launcher: Path) -> Path:
    "One process, uninterrupted (checkpoints at the end only)."
    r = cli(launcher, "dbgan", "--config", str(run_config(work, "single_ref", checkpoint_every=100)), "--quiet")
    assert r.returncode == 0, r.stderr
    return work / "single_ref"


def test_preemption_signal_checkpoints_exits_75_and_resumes_identically(work, launcher, single_reference):
    name, step = "preempted", RNG.randint(2, 8)
    cfg = run_config(work, name, checkpoint_every=100)
    log = work / f"{name}.log"
    proc = start([sys.executable, str(launcher), "dbgan", "--config", str(cfg), "--quiet"], log)
    kill_at(proc, work / name, step, signal.SIGUSR1, target="self")  # no pause: the signal lands anywhere in a step
    code = finish(proc, log, 60)
    text = log.read_text()
    stopped = load(work / name / "last.pt")["step"]
    assert code == 75, f"SIGUSR1 at step {step}: exit status {code}\n{text}"
    assert step <= stopped < 12 and "received SIGUSR1" in text and f"stopped after step {stopped} of 12" in text, text
    r = cli(launcher, "dbgan", "--config", str(cfg), "--resume", "--quiet")
    assert r.returncode == 0 and f"from step {stopped}" in r.stderr, r.stderr
    assert_same_run(single_reference, work / name)


def test_full_disk_stops_with_one_line_and_resumes_identically(work, launcher, single_reference):
    name = "disk_full"
    cfg = run_config(work, name, checkpoint_every=3)  # checkpoints at steps 3, 6, 9, 12; no room from step 7 on: 9's fails
    run = work / name
    r = cli(launcher, "dbgan", "--config", str(cfg), "--quiet", env={"TEST_DISK_FULL_AT": "7"})
    errors = [line for line in r.stderr.splitlines() if "error" in line.lower()]
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(errors) == 1, r.stderr
    m = re.fullmatch(rf"dbgan-train: error: no room to write last\.pt in {re.escape(str(run))}: it needs ([\d,]+) bytes and "
                     rf"([\d,]+) bytes are free\. {re.escape(str(run / 'last.pt'))} \(step 6\) and {re.escape(str(run / 'previous.pt'))} "
                     rf"are intact\. Free some space, then resume with: dbgan-train dbgan --config {re.escape(str(run / 'config.yaml'))} --resume",
                     errors[0])
    size = (run / "last.pt").stat().st_size  # step 9's checkpoint is as large as step 6's, give or take a few bytes
    assert m and abs(int(m[1].replace(",", "")) - size) < 100 and int(m[2].replace(",", "")) > 0, (errors[0], size)
    assert (load(run / "last.pt")["step"], load(run / "previous.pt")["step"]) == (6, 3)  # both intact
    assert_no_leftovers(run)  # the temporary file of the failed write is gone
    assert pd.read_csv(run / "metrics.csv")["step"].tolist() == list(range(1, 10))  # rows up to the failed checkpoint
    r = cli(launcher, "dbgan", "--config", str(cfg), "--resume", "--quiet")
    assert r.returncode == 0 and "from step 6" in r.stderr, r.stderr
    assert_same_run(single_reference, run)


# --- start-up failures ----------------------------------------------------------------------------------------------

def test_startup_failures_are_one_line_with_exit_2(work, capsys, monkeypatch, tmp_path):
    base = config(work, "startup", source="real", iterations=2)
    def train(d: dict, *extra: str) -> tuple[int, str]:
        code = train_cli(["dbgan", "--config", str(write_config(tmp_path, "startup", d)), "--quiet", *extra])
        return code, capsys.readouterr().err
    # ImageNet weights neither cached nor downloadable (a proxy on a closed port stands in for "offline")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    for var in ("https_proxy", "HTTPS_PROXY"): monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("no_proxy", "NO_PROXY"): monkeypatch.delenv(var, raising=False)
    offline = {**base, "perceptual_weights": "imagenet"}
    code, err = train(offline)
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("dbgan-train: error: perceptual_weights='imagenet': ImageNet VGG-19 weights are not cached"), err
    code, err = train(offline, "--debug")  # the same with the traceback
    assert code == 2 and err.startswith("Traceback (most recent call last):") and "dbgan-train: error: perceptual_weights" in err, err
    monkeypatch.setenv("DBGAN_DEBUG", "1")
    assert "Traceback" in train(offline)[1]
    monkeypatch.delenv("DBGAN_DEBUG")
    # an image in the data root that cannot be read, and a root that does not exist
    import shutil
    data = tmp_path / "data"
    shutil.copytree(work / "data", data)
    broken = sorted((data / "train").glob("*/sharp/*.png"))[0]
    broken.write_bytes(b"not a png")
    code, err = train({**base, "data_root": str(data)})
    assert code == 2 and len(err.splitlines()) == 1 and "cannot read" in err and str(broken) in err, err
    code, err = train({**base, "data_root": str(tmp_path / "nowhere")})
    assert (code, err) == (2, f"dbgan-train: error: data_root not found: {tmp_path / 'nowhere'}\n")
    # a bad setting; then the same command runs once it is fixed (a failed start leaves no run in the way)
    code, err = train({**base, "patch": 48})
    assert code == 2 and err.startswith("dbgan-train: error: config 'patch' = 48: must be a multiple of 32"), err
    assert train(base)[0] == 0


# --- the Slurm recipe --------------------------------------------------------------------------------------------

def test_slurm_script_preempted_requeued_and_finished(work, tmp_path):
    "The sbatch script on 2 CPU processes: SIGUSR1 to the job, a requeue, the requeued job finishes the run."
    text = SLURM_SCRIPT.read_text()
    assert "#SBATCH --signal=B:USR1@120" in text and "#SBATCH --requeue" in text
    assert re.search(r"^torchrun .*--max-restarts", text, re.M) and "--run" in text
    params = tmp_path / "tiny.yaml"
    params.write_text(yaml.safe_dump(dict(
        mode="quick", data_root=str(work / "data"), real_blur_root=str(work / "data" / "real_blur"), out_dir=str(tmp_path / "runs"),
        dbgan_iterations=12, dbgan_blocks=1, bgan_blocks=1, nf=8, gc=4, d_nf=8, patch=32, batch=2, threads=1, val_every=6,
        val_crop=32, val_max_images=1, checkpoint_every=4, perceptual_weights="random", perceptual_layer="conv2_2")))
    bin_dir = tmp_path / "bin"  # scontrol stand-in: records its arguments
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'scontrol.calls'}\n")
    (bin_dir / "scontrol").chmod(0o755)
    env = {"RUN": "dbgan_real", "PARAMS": str(params), "NPROC": "2", "MAX_RESTARTS": "1", "SLURM_JOB_ID": "4242",
           "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}"}
    run, step, log = tmp_path / "runs" / "dbgan_real", RNG.randint(2, 8), tmp_path / "job1.log"
    proc = start(["bash", str(SLURM_SCRIPT)], log, env)
    kill_at(proc, run, step, signal.SIGUSR1, target="self")  # what Slurm does 120 s before the time limit
    code = finish(proc, log, 150)
    stopped = load(run / "last.pt")["step"]
    assert code == 75 and step <= stopped < 12, f"USR1 at step {step}, exit {code}, last.pt at {stopped}\n{log.read_text()[-3000:]}"
    assert (tmp_path / "scontrol.calls").read_text() == "requeue 4242\n"
    log2 = tmp_path / "job2.log"  # the requeued job
    code = finish(start(["bash", str(SLURM_SCRIPT)], log2, env), log2, 150)
    assert code == 0, log2.read_text()[-3000:]
    assert load(run / "last.pt")["step"] == 12 and f"from step {stopped}" in log2.read_text()
    assert pd.read_csv(run / "metrics.csv")["step"].tolist() == list(range(1, 13))
    assert (tmp_path / "scontrol.calls").read_text() == "requeue 4242\n"  # not requeued again
    assert_no_leftovers(run)
