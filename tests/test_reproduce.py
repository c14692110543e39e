"""Fast checks of the reproduction notebook's plumbing: parameter files, table layout, notebook discovery, CLI refusals."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from dbgan_nb.reproduce import (BLURRED_METHOD, PUBLISHED_GOPRO, TABLE_COLUMNS, build_table, default_notebook,
                                notebook_parameters, reproduce_cli, table_markdown, table_row)

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "nbs" / "10_reproduce_gopro.ipynb"


@pytest.fixture(scope="module")
def defaults() -> dict:
    return notebook_parameters(NOTEBOOK)


@pytest.mark.parametrize("name", ["quick.yaml", "paper.yaml", "reference.yaml", "seeds.yaml"])
def test_params_files_only_use_notebook_parameters(name, defaults):
    params = yaml.safe_load((REPO / "params" / name).read_text())
    assert isinstance(params, dict) and params
    assert set(params) <= set(defaults), f"keys not in the parameters cell: {sorted(set(params) - set(defaults))}"
    assert params["mode"] == {"paper.yaml": "paper"}.get(name, "quick")


def test_quick_yaml_repeats_the_notebook_defaults(defaults):
    assert yaml.safe_load((REPO / "params" / "quick.yaml").read_text()) == defaults


def test_paper_yaml_has_the_paper_hyper_parameters():
    p = yaml.safe_load((REPO / "params" / "paper.yaml").read_text())
    # design.md section 1: 9 / 16 RDBs of 64 channels, batch 4, 128 px, lr 1e-4, alpha 0.005, beta 0.01, ImageNet VGG
    assert (p["bgan_blocks"], p["dbgan_blocks"], p["nf"], p["batch"], p["patch"]) == (9, 16, 64, 4, 128)
    assert (p["lr"], p["alpha"], p["beta"], p["blur_key"], p["perceptual_weights"]) == (1e-4, 0.005, 0.01, "blur", "imagenet")
    # the released topology, evaluation in float32, checkpoints that lose minutes, not days
    assert (p["dbgan_arch"], p["eval_bf16"], p["checkpoint_minutes"]) == ("rrdb", False, 10)
    assert p["bgan_lowpass_sigma"] is None and p["bgan_loss_kind"] == "ls"  # the paper's BGAN objective


def test_table_puts_blurred_input_first_and_labels_published_rows():
    s = pd.DataFrame({"psnr": [25.0, 26.0], "ssim2d": [0.7, 0.8], "ssim_matlab": [0.75, 0.85]})
    ours = [table_row("DBGAN, kernel blur (naive)", "bundled", s + 0.0, 100, 0.1)]
    t = build_table(table_row(BLURRED_METHOD, "bundled", s), ours)
    assert list(t.columns) == TABLE_COLUMNS
    assert t.method.tolist()[:2] == [BLURRED_METHOD, "DBGAN, kernel blur (naive)"]
    assert np.isclose(t.psnr[0], 25.5)  # (25 + 26) / 2
    published = t.iloc[2:]
    assert len(published) == len(PUBLISHED_GOPRO)
    assert (published.data == "published, GoPro test set (different data)").all()
    assert published.ssim2d.isna().all() and published.ssim_published.notna().all()
    assert "Protocol:" in table_markdown(t)
    with pytest.raises(ValueError, match="first row must be the blurred input"):
        build_table(ours[0], [])


def test_default_notebook_is_found_in_a_source_checkout():
    assert default_notebook() == NOTEBOOK


def test_cli_refuses_unknown_parameter_before_running(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("mode: quick\ndbgan_iteratons: 3\n")
    assert reproduce_cli(["-f", str(bad), "--out", str(tmp_path / "runs")]) == 2
    assert "dbgan_iteratons" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    assert reproduce_cli(["-f", str(tmp_path / "missing.yaml")]) == 2


def test_runs_train_one_by_one_and_ship_as_reference_weights(tmp_path, capsys):
    "dbgan-reproduce --run NAME trains one run of the experiment; --export-weights ships them all, checked on load."
    from dbgan_nb.data import build_default_dataset
    from dbgan_nb.reproduce import load_reference_weights
    data = build_default_dataset(tmp_path / "data", scale="small", progress=False)
    tiny = dict(mode="quick", data_root=str(data), out_dir=str(tmp_path / "runs"), threads=1, bgan_iterations=2,
                dbgan_iterations=2, bgan_blocks=1, dbgan_blocks=1, nf=8, gc=4, d_nf=8, patch=32, batch=2, kernel_size=9,
                val_every=2, val_crop=None, val_max_images=1)
    params = tmp_path / "tiny.yaml"
    params.write_text(yaml.safe_dump(tiny))
    assert reproduce_cli(["-f", str(params), "--export-weights", str(tmp_path / "w"), "--quiet"]) == 2
    assert "runs not finished: bgan (not trained)" in capsys.readouterr().err
    # a run stopped early (as SIGTERM would) exits 75 and says so; the same command then resumes and finishes it
    import dataclasses
    import dbgan_nb.reproduce as reproduce
    real_train_run = reproduce.train_run
    stopped = lambda kind, cfg, *a, **k: real_train_run(kind, dataclasses.replace(cfg, stop_after=1), *a, **k)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reproduce, "train_run", stopped)
        assert reproduce_cli(["-f", str(params), "--run", "bgan", "--quiet"]) == 75  # stopped: the same command goes on
    out = capsys.readouterr()
    assert "bgan stopped at step 1 of 2" in out.err and "trained" not in out.out
    for name in ("bgan", "dbgan_bgan", "dbgan_kernel", "dbgan_real"):
        assert reproduce_cli(["-f", str(params), "--run", name, "--quiet"]) == 0, name
    assert "trained" in capsys.readouterr().out
    assert reproduce_cli(["-f", str(params), "--run", "dbgan_fancy", "--quiet"]) == 2
    assert "unknown run" in capsys.readouterr().err
    assert reproduce_cli(["-f", str(params), "--export-weights", str(tmp_path / "w"), "--quiet"]) == 0
    shipped = load_reference_weights(tmp_path / "w")
    assert sorted(shipped["dbgan"]) == ["bgan", "kernel", "real"] and shipped["bgan"] is not None
    manifest = shipped["manifest"]
    assert manifest["runs"]["dbgan_real"]["steps"] == 2 and manifest["dataset"]["manifest_sha256"]
    assert {"bgan.pt", "dbgan_real.pt", "logs/dbgan_real_val.csv", "logs/bgan_config.yaml"} <= set(manifest["files"])
