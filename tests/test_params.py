"""The committed training configurations load and match the documented small configuration of the training chapter."""
from pathlib import Path

import pytest
import yaml

from dbgan_nb.runs import TrainConfig, small_config

PARAMS = Path(__file__).resolve().parent.parent / "params"


@pytest.mark.parametrize("kind", ["bgan", "dbgan"])
def test_small_training_configs_match_small_config(kind):
    cfg = TrainConfig.from_yaml(PARAMS / f"{kind}_small.yaml")  # unknown keys would raise
    extra = {"bgan_checkpoint": "runs/small_bgan/best.pt"} if kind == "dbgan" else {}
    assert cfg == small_config(kind, out=f"runs/small_{kind}", **extra)
    # the values the chapter documents: 2 RDBs of width 32, 64 px patches, lr 1e-3 -> 1e-5, 600 / 1000 steps, BCE BGAN
    assert (cfg.n_blocks, cfg.nf, cfg.patch, cfg.lr, cfg.lr_min) == (2, 32, 64, 1e-3, 1e-5)
    assert cfg.iterations == {"bgan": 600, "dbgan": 1000}[kind]
    assert cfg.loss_kind == {"bgan": "bce", "dbgan": "ls"}[kind]


def test_quick_mode_derives_from_the_small_configuration():
    "One source for 'small': quick mode's networks, patches, rates and BGAN objective are SMALL_CONFIG's (runs chapter)."
    from dbgan_nb.runs import SMALL_CONFIG
    quick = yaml.safe_load((PARAMS / "quick.yaml").read_text())
    common, bgan = SMALL_CONFIG["common"], SMALL_CONFIG["bgan"]
    assert (quick["bgan_blocks"], quick["dbgan_blocks"]) == (common["n_blocks"], common["n_blocks"])
    for key in ("nf", "gc", "d_nf", "patch", "lr", "lr_min"):
        assert quick[key] == common[key], key
    assert (quick["bgan_iterations"], quick["bgan_loss_kind"], quick["bgan_lowpass_sigma"], quick["d_init_std"]) == \
        (bgan["iterations"], bgan["loss_kind"], bgan["lowpass_sigma"], bgan["d_init_std"])
    assert quick["bgan_perceptual_weights"] == bgan["perceptual_weights"] is None
    assert quick["bgan_arch"] == bgan["arch"] == "path" and quick["bgan_d_standardise"] is False and "d_standardise" not in bgan
