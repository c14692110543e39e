"""Every command behaves alike: a missing input and a bad flag both exit with status 2 and an error line
`PROG: error: ...` on stderr, with no traceback unless --debug (or DBGAN_DEBUG=1) asks for it; --device auto|cpu|cuda
and --quiet exist wherever they apply."""
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

# (console script, module:function) as setup.py installs them
COMMANDS = {
    "dbgan-make-data": "dbgan_nb.data:make_data_cli",
    "dbgan-eval": "dbgan_nb.metrics:eval_cli",
    "dbgan-deblur": "dbgan_nb.inference:deblur_cli",
    "dbgan-train": "dbgan_nb.train:train_cli",
    "dbgan-reproduce": "dbgan_nb.reproduce:reproduce_cli",
    "dbgan-bench": "dbgan_nb.benchmarks:bench_cli",
    "dbgan-export": "dbgan_nb.export:export_cli",
    "dbgan-gpu-check": "dbgan_nb.gpu_check:gpu_check_cli",
}


def run(command: str, *args: str) -> subprocess.CompletedProcess:
    "Run a console script's function in a fresh interpreter (no install needed)."
    module, function = COMMANDS[command].split(":")
    code = f"import sys; from {module} import {function}; sys.exit({function}(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def missing_input(tmp: Path) -> dict[str, list[str]]:
    "Arguments naming an input that does not exist, per command (make-data: a target that is a file, not a folder)."
    nowhere = str(tmp / "nowhere")
    (tmp / "a-file").write_text("x")
    return {
        "dbgan-make-data": ["--out", str(tmp / "a-file"), "--quiet"],
        "dbgan-eval": ["--gopro", nowhere, "--pred", "blur", "--quiet"],
        "dbgan-deblur": [nowhere, "--out", str(tmp / "out"), "--weights", nowhere + ".pt", "--quiet"],
        "dbgan-train": ["bgan", "--config", nowhere + ".yaml", "--quiet"],
        "dbgan-reproduce": ["-f", nowhere + ".yaml", "--quiet"],
        "dbgan-bench": ["--sections", "peak", "--out", str(tmp / "a-file" / "sub"), "--quick", "--quiet"],
        "dbgan-export": ["--weights", nowhere + ".pt", "--out", str(tmp / "m.onnx")],
        "dbgan-gpu-check": ["--out", str(tmp / "a-file" / "sub"), "--device", "cpu", "--tiny", "--quiet"],
    }


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_missing_input_exits_2_with_a_named_error(command, tmp_path):
    result = run(command, *missing_input(tmp_path)[command])
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert f"{command}: error: " in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_debug_adds_the_traceback(command, tmp_path, capsys, monkeypatch):
    "The same missing input with --debug, and with DBGAN_DEBUG=1 (in this process: the imports are already paid for)."
    module, function = COMMANDS[command].split(":")
    cli = getattr(importlib.import_module(module), function)
    assert cli([*missing_input(tmp_path)[command], "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.rstrip().splitlines()[-1].startswith(f"{command}: error: "), err[-2000:]
    monkeypatch.setenv("DBGAN_DEBUG", "1")
    assert cli(missing_input(tmp_path)[command]) == 2
    assert "Traceback (most recent call last)" in capsys.readouterr().err


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_bad_flag_exits_2(command):
    result = run(command, "--no-such-flag")
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"{command}: error: " in result.stderr


@pytest.mark.parametrize("command", ["dbgan-eval", "dbgan-deblur", "dbgan-train", "dbgan-reproduce", "dbgan-bench",
                                     "dbgan-gpu-check", "dbgan-export"])
def test_device_flag_takes_auto_cpu_cuda(command):
    help_text = run(command, "--help").stdout
    assert "--device {auto,cpu,cuda}" in help_text, help_text


@pytest.mark.parametrize("command", ["dbgan-make-data", "dbgan-eval", "dbgan-deblur", "dbgan-train", "dbgan-reproduce",
                                     "dbgan-bench", "dbgan-gpu-check"])
def test_quiet_flag_exists(command):
    assert "--quiet" in run(command, "--help").stdout


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_debug_flag_exists(command, capsys):
    module, function = COMMANDS[command].split(":")
    with pytest.raises(SystemExit):
        getattr(importlib.import_module(module), function)(["--help"])
    assert "--debug" in capsys.readouterr().out
