"dbgan-make-data end to end: refusal without --force, byte-identical rebuilds, no half-written folder after a failure, manifest hashes."
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import dbgan_nb.data as data
from dbgan_nb.data import make_data_cli

SMALL = ["--scale", "small", "--quiet"]


def tree_bytes(root: Path) -> dict[str, bytes]:
    "Every file below root, by relative path, with its bytes."
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    "Run the console entry point in a fresh interpreter (exit code and stderr as a user sees them)."
    code = "import sys; from dbgan_nb.data import make_data_cli; sys.exit(make_data_cli())"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def small_build(tmp_path_factory) -> Path:
    "One small dataset shared by the read-only tests."
    out = tmp_path_factory.mktemp("built") / "small"
    assert make_data_cli(["--out", str(out), *SMALL]) == 0
    return out


def test_refuses_non_empty_target_without_force(tmp_path):
    out = tmp_path / "target"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    result = run_cli("--out", str(out), *SMALL)
    assert result.returncode == 2
    assert str(out) in result.stderr and "--force" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]  # no temporary folder left


def test_force_replaces_target(tmp_path):
    out = tmp_path / "target"
    out.mkdir()
    (out / "old.txt").write_text("old")
    assert make_data_cli(["--out", str(out), "--force", *SMALL]) == 0
    assert not (out / "old.txt").exists()
    assert (out / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]  # the old copy was removed too


def test_empty_target_folder_is_accepted(tmp_path):
    (tmp_path / "empty").mkdir()
    assert make_data_cli(["--out", str(tmp_path / "empty"), *SMALL]) == 0


def test_same_seed_gives_byte_identical_files(tmp_path, small_build):
    assert make_data_cli(["--out", str(tmp_path / "again"), *SMALL]) == 0
    first, second = tree_bytes(small_build), tree_bytes(tmp_path / "again")
    assert list(first) == list(second)
    assert [name for name in first if first[name] != second[name]] == []


def test_other_seed_gives_other_images(tmp_path, small_build):
    assert make_data_cli(["--out", str(tmp_path / "seed1"), "--seed", "1", *SMALL]) == 0
    first, other = tree_bytes(small_build), tree_bytes(tmp_path / "seed1")
    assert sum(first[name] != other.get(name) for name in first) > len(first) // 2


def test_manifest_hashes_match_files(small_build):
    manifest = json.loads((small_build / "manifest.json").read_text())
    on_disk = sorted(p.relative_to(small_build).as_posix() for p in small_build.rglob("*")
                     if p.is_file() and p.name != "manifest.json" and p.relative_to(small_build).parts[0] != data.FOREIGN_FOLDER)
    assert [f["path"] for f in manifest["files"]] == on_disk
    for f in manifest["files"]:
        content = (small_build / f["path"]).read_bytes()
        assert hashlib.sha256(content).hexdigest() == f["sha256"], f["path"]
        assert len(content) == f["bytes"]
    assert manifest["seed"] == 0 and manifest["scale"] == "small"
    assert {s: manifest["splits"][s]["pairs"] for s in ("train", "val", "test")} == {"train": 18, "val": 4, "test": 6}


def test_foreign_sets_leave_the_dataset_unchanged(tmp_path, small_build, monkeypatch):
    "A build without the foreign-blur sets has the same files and the same manifest.json, byte for byte."
    monkeypatch.setattr(data, "_write_foreign_sets", lambda *args, **kwargs: None)
    data.build_default_dataset(tmp_path / "plain", scale="small", progress=False)
    plain, full = tree_bytes(tmp_path / "plain"), tree_bytes(small_build)
    assert plain == {name: content for name, content in full.items() if not name.startswith(data.FOREIGN_FOLDER + "/")}
    foreign = [name for name in full if name.startswith(data.FOREIGN_FOLDER + "/")]
    assert len(foreign) == 3 * 6 * 2 + 1  # three synthesisers x six test frames x (blur, sharp), and their manifest


def test_layout_is_native_gopro(small_build):
    for split in ("train", "val", "test"):
        for seq in (small_build / split).iterdir():
            assert sorted(p.name for p in seq.iterdir()) == ["blur", "blur_gamma", "sharp"]
            names = [sorted(p.name for p in (seq / kind).iterdir()) for kind in ("blur", "blur_gamma", "sharp")]
            assert names[0] == names[1] == names[2] == ["000000.png", "000001.png"]
    assert len(list((small_build / "real_blur").glob("*.png"))) == 9


class InjectedFailure(RuntimeError):
    pass


def failing_writer(after: int):
    "A write_image that writes `after` files and then fails, as a full disk would."
    real, calls = data.write_image, {"n": 0}

    def write(path, image):
        calls["n"] += 1
        if calls["n"] > after: raise InjectedFailure(f"injected failure writing {path}")
        real(path, image)
    return write


def test_failure_leaves_nothing_behind(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data, "write_image", failing_writer(after=10))
    assert make_data_cli(["--out", str(tmp_path / "new"), *SMALL]) == 1  # one error line, not a traceback
    assert capsys.readouterr().err.startswith("dbgan-make-data: error: InjectedFailure: injected failure writing")
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary folder


def test_failure_with_force_keeps_the_old_dataset(tmp_path, monkeypatch, small_build):
    out = tmp_path / "existing"
    shutil.copytree(small_build, out)
    before = tree_bytes(out)
    monkeypatch.setattr(data, "write_image", failing_writer(after=10))
    assert make_data_cli(["--out", str(out), "--force", *SMALL]) == 1
    assert tree_bytes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]


def test_bad_arguments_exit_2(tmp_path):
    assert run_cli("--out", str(tmp_path / "x"), "--scale", "huge").returncode == 2
    assert run_cli("--seed", "1").returncode == 2  # --out is required
    assert not (tmp_path / "x").exists()
