"environment.yml and settings.ini must ask for the same packages (runtime, dev and the export extra)."
from configparser import ConfigParser
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def settings_requirements() -> set[str]:
    cfg = ConfigParser(delimiters=["="])
    cfg.read(ROOT / "settings.ini")
    d = cfg["DEFAULT"]
    return set(d["requirements"].split()) | set(d["dev_requirements"].split()) | set(d["export_requirements"].split())


def environment_requirements() -> set[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return set(pip)


def test_environment_matches_settings():
    assert settings_requirements() == environment_requirements()


def test_environment_pins_python_311():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]


def test_nbdev_pins_from_design_notes():
    reqs = settings_requirements()
    assert {"nbdev==2.4.14", "execnb==0.1.18", "fastcore>=1.12.3,<2"} <= reqs
