"""The benchmarks' Tunix virtualenv: created when missing, reused when present, and the
baseline script they run lives in the repository."""
import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import tunix_venv  # noqa: E402


def test_a_missing_venv_is_created_with_the_pins(tmp_path):
  venv = tmp_path / "venv"
  make, install = tunix_venv.commands(venv)
  assert make == [sys.executable, "-m", "venv", str(venv)]
  assert install[:4] == [str(venv / "bin" / "python"), "-m", "pip", "install"]
  assert set(tunix_venv.PINS) <= set(install) and "google-tunix==0.1.7" in install


def test_an_existing_venv_is_reused_without_running_anything(tmp_path, monkeypatch):
  python = tmp_path / "venv" / "bin" / "python"
  python.parent.mkdir(parents=True)
  python.write_text("")
  monkeypatch.setattr(tunix_venv.subprocess, "run",
                      lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran a command")))
  assert tunix_venv.commands(tmp_path / "venv") == []
  assert tunix_venv.python(tmp_path / "venv") == python


def test_the_baseline_script_is_in_the_repository_and_the_flags_are_shared():
  root = pathlib.Path(__file__).resolve().parents[1]
  assert tunix_venv.BASELINE.is_file() and root in tunix_venv.BASELINE.parents
  ap = argparse.ArgumentParser()
  tunix_venv.add_arguments(ap)
  args = ap.parse_args([])
  assert args.tunix_venv == tunix_venv.VENV and args.skip_tunix is False
