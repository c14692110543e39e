"""The committed training configurations load and match the documented small configuration of the training chapter."""
from pathlib import Path

import pytest

from dbgan_nb.runs import TrainConfig, small_config

PARAMS = Path(__file__).resolve().parent.parent / "params"


@pytest.mark.parametrize("kind", ["bgan", "dbgan"])
def test_small_training_configs_match_small_config(kind):
    cfg = TrainConfig.from_yaml(PARAMS / f"{kind}_small.yaml")  # unknown keys would raise
    extra = {"bgan_checkpoint": "runs/small_bgan/best.pt"} if kind == "dbgan" else {}
    assert cfg == small_config(kind, out=f"runs/small_{kind}", **extra)
    # the values the chapter documents: 2 RDBs of width 32, 64 px patches, lr 1e-3 -> 1e-5, 300 / 1000 steps, BCE BGAN
    assert (cfg.n_blocks, cfg.nf, cfg.patch, cfg.lr, cfg.lr_min) == (2, 32, 64, 1e-3, 1e-5)
    assert cfg.iterations == {"bgan": 300, "dbgan": 1000}[kind]
    assert cfg.loss_kind == {"bgan": "bce", "dbgan": "ls"}[kind]
