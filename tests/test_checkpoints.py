"Checkpoint files: refusing code-running pickles, rejecting non-checkpoints, loading the released layout."
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from dbgan_nb.models import (BGANGenerator, DBGANGenerator, ReleaseGenerator, UnsafeCheckpointError,
                             generator_checkpoint, load_generator)

RELEASE_KEYS = Path(__file__).parent / "data" / "release_checkpoint_keys.json"


class MakesDirectory:
    "Unpickling this calls os.makedirs(path): harmless, but arbitrary code running."
    def __init__(self, path: Path): self.path = path
    def __reduce__(self): return (os.makedirs, (str(self.path),))


def _save_torch(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


def _save_raw_pickle(obj, path: Path, protocol: int) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch_zip", "torch_legacy", "pickle2", "pickle4"])
def test_code_running_pickle_is_refused_and_not_run(tmp_path, writer):
    marker = tmp_path / "payload_ran"
    payload = {"model.0.weight": torch.zeros(1), "x": MakesDirectory(marker)}
    path = tmp_path / "evil.pth"
    if writer == "torch_zip": _save_torch(payload, path)
    elif writer == "torch_legacy": torch.save(payload, path, _use_new_zipfile_serialization=False)
    else: _save_raw_pickle(payload, path, protocol=int(writer[-1]))
    with pytest.raises(UnsafeCheckpointError, match="needs arbitrary unpickling") as info:
        load_generator(path)
    assert str(path) in str(info.value)
    assert not marker.exists()
    # the payload is real: an unsafe load would have run it
    pickle.loads(path.read_bytes()) if writer.startswith("pickle") else torch.load(path, weights_only=False)
    assert marker.exists()


def test_unsafe_error_is_a_value_error(tmp_path):
    path = _save_torch({"x": MakesDirectory(tmp_path / "m")}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="makedirs"):
        load_generator(path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"\x89PNG\r\n\x1a\n" + bytes(64)])
def test_non_checkpoint_files_are_value_errors(tmp_path, content):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a PyTorch checkpoint") as info:
        load_generator(path)
    assert not isinstance(info.value, UnsafeCheckpointError)
    assert str(path) in str(info.value)


def test_truncated_checkpoint(tmp_path):
    path = _save_torch(generator_checkpoint(DBGANGenerator(n_blocks=1, nf=8, gc=4)), tmp_path / "g.pt")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_generator(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        load_generator(tmp_path / "nothere.pth")


def test_plain_data_that_is_not_a_generator(tmp_path):
    path = _save_torch({"epoch": 3, "lr": 1e-4}, tmp_path / "state.pth")
    with pytest.raises(ValueError, match=r"found a dict with keys \['epoch', 'lr'\]"):
        load_generator(path)
    path = _save_torch([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="found a list"):
        load_generator(path)


def test_release_state_dict_keys_and_shapes_match_the_published_list():
    expected = json.loads(RELEASE_KEYS.read_text())
    got = [[k, list(v.shape)] for k, v in ReleaseGenerator().state_dict().items()]
    assert len(expected["keys"]) == 488
    assert got == expected["keys"]
    assert sum(p.numel() for p in ReleaseGenerator().parameters()) == expected["num_params"] == 11_588_163


@pytest.mark.parametrize("prefix", ["", "module."])
def test_release_file_loads_with_and_without_module_prefix(tmp_path, prefix):
    torch.manual_seed(0)
    net = ReleaseGenerator()
    path = _save_torch({prefix + k: v for k, v in net.state_dict().items()}, tmp_path / "G.pth")
    loaded = load_generator(path)
    assert isinstance(loaded, ReleaseGenerator) and not loaded.training
    for (k, a), (_, b) in zip(net.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


def test_release_with_a_wrong_shape_is_rejected(tmp_path):
    state = ReleaseGenerator().state_dict()
    state["model.4.weight"] = torch.zeros(3, 32, 3, 3)
    with pytest.raises(ValueError, match=r"wrong shape 1 \(e.g. model.4.weight \(3, 32, 3, 3\) vs \(3, 64, 3, 3\)\)"):
        load_generator(_save_torch(state, tmp_path / "G.pth"))


def test_our_bare_state_dict_with_an_extra_key_is_rejected():
    state = dict(BGANGenerator(n_blocks=1, nf=8, gc=4).state_dict())
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unexpected 1"):
        load_generator(state)


def test_checkpoint_of_a_compiled_style_wrapper_is_unwrapped(tmp_path):
    wrapped = torch.nn.DataParallel(DBGANGenerator(n_blocks=1, nf=8, gc=4))
    ckpt = generator_checkpoint(wrapped)
    assert ckpt["arch"] == "DBGANGenerator" and not any(k.startswith("module.") for k in ckpt["state_dict"])
    assert isinstance(load_generator(_save_torch(ckpt, tmp_path / "g.pt")), DBGANGenerator)
