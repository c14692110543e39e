"dbgan-deblur end to end: files written, bad inputs reported by name, exit codes, inputs never overwritten."
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dbgan_nb.inference import deblur_cli
from dbgan_nb.models import DBGANGenerator, generator_checkpoint, init_normal_


def save_png(path: Path, image: np.ndarray) -> None:
    "Write an RGB uint8 image with PIL (independent of dbgan_nb.data)."
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def load_png(path: Path) -> np.ndarray:
    "Read an image as uint8 RGB with PIL."
    return np.asarray(Image.open(path).convert("RGB"))


def save_checkpoint(path: Path, std: float) -> Path:
    "A small DBGAN generator checkpoint; std=0 gives all-zero weights, i.e. output = clamp(input + 0) = input."
    torch.manual_seed(0)
    model = init_normal_(DBGANGenerator(n_blocks=1, nf=8, gc=4), std=std)
    torch.save(generator_checkpoint(model), path)
    return path


@pytest.fixture
def photos(tmp_path):
    "A folder with two good images (odd sizes) and one truncated PNG."
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    images = {"a": rng.integers(0, 256, (45, 61, 3), dtype=np.uint8), "b": rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)}
    for name, image in images.items(): save_png(folder / f"{name}.png", image)
    good = (folder / "a.png").read_bytes()
    (folder / "broken.png").write_bytes(good[: len(good) // 2])  # truncated in the middle of the pixel data
    return folder, images


def cli_command() -> list[str]:
    "The installed console script, or the same entry point through python -c when the package is not installed."
    script = Path(sys.executable).parent / "dbgan-deblur"
    if script.exists(): return [str(script)]
    return [sys.executable, "-c", "import sys; from dbgan_nb.inference import deblur_cli; sys.exit(deblur_cli())"]


def test_identity_generator_in_process(photos, tmp_path, capsys):
    folder, images = photos
    weights = save_checkpoint(tmp_path / "zero.pt", std=0.0)
    out = tmp_path / "out"
    code = deblur_cli([str(folder), "--out", str(out), "--weights", str(weights), "--tile", "32", "--overlap", "8",
                       "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1
    assert "broken.png" in err
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]  # no temporary or partial files left
    for name, image in images.items():  # a zero generator is the identity, so the outputs are the inputs exactly
        np.testing.assert_array_equal(load_png(out / f"{name}.png"), image)


def test_console_script_random_generator(photos, tmp_path):
    folder, images = photos
    weights = save_checkpoint(tmp_path / "random.pt", std=0.1)
    out = tmp_path / "out"
    result = subprocess.run(cli_command() + [str(folder / "*.png"), "--out", str(out), "--weights", str(weights),
                                             "--tile", "32", "--overlap", "16"], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "broken.png" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    for name, image in images.items():
        restored = load_png(out / f"{name}.png")
        assert restored.shape == image.shape
        assert np.abs(restored.astype(int) - image).mean() > 1  # the random generator changed the image


@pytest.mark.parametrize("content", [None, b"this is not a checkpoint", "state_dict_of_wrong_model"])
def test_bad_weights_stop_before_processing(photos, tmp_path, capsys, content):
    folder, _ = photos
    weights = tmp_path / "weights.pt"
    if content == "state_dict_of_wrong_model": torch.save({"conv.weight": torch.zeros(3, 3, 3, 3)}, weights)
    elif content is not None: weights.write_bytes(content)
    out = tmp_path / "out"
    code = deblur_cli([str(folder), "--out", str(out), "--weights", str(weights), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert str(weights) in err
    assert not out.exists()


def test_never_overwrites_an_input(tmp_path, capsys):
    rng = np.random.default_rng(1)
    own, other = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8), rng.integers(0, 256, (21, 23, 3), dtype=np.uint8)
    save_png(tmp_path / "photos" / "own.png", own)
    save_png(tmp_path / "elsewhere" / "other.png", other)
    before = (tmp_path / "photos" / "own.png").read_bytes()
    weights = save_checkpoint(tmp_path / "random.pt", std=0.1)
    code = deblur_cli([str(tmp_path / "photos" / "own.png"), str(tmp_path / "elsewhere"), "--out", str(tmp_path / "photos"),
                       "--weights", str(weights), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1
    assert "own.png" in err and "overwrite" in err
    assert (tmp_path / "photos" / "own.png").read_bytes() == before
    assert load_png(tmp_path / "photos" / "other.png").shape == other.shape  # the other input was still processed


def test_name_clash_is_refused_before_processing(tmp_path, capsys):
    rng = np.random.default_rng(2)
    for folder in ("day1", "day2"): save_png(tmp_path / folder / "shot.png", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    weights = save_checkpoint(tmp_path / "zero.pt", std=0.0)
    out = tmp_path / "out"
    code = deblur_cli([str(tmp_path / "day1"), str(tmp_path / "day2"), "--out", str(out), "--weights", str(weights)])
    err = capsys.readouterr().err
    assert code == 2
    assert str(tmp_path / "day1" / "shot.png") in err and str(tmp_path / "day2" / "shot.png") in err
    assert not out.exists()


def test_missing_input_is_named(tmp_path, capsys):
    weights = save_checkpoint(tmp_path / "zero.pt", std=0.0)
    code = deblur_cli([str(tmp_path / "nope.png"), "--out", str(tmp_path / "out"), "--weights", str(weights)])
    assert code == 2
    assert "nope.png" in capsys.readouterr().err
