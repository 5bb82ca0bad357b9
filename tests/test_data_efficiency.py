"""The data-efficiency sweep's IL-stage summary, on loss curves written by hand."""
import json
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import data_efficiency as de  # noqa: E402


def _write(path: pathlib.Path, losses: list[float]) -> None:
  path.mkdir(parents=True)
  with open(path / "metrics.jsonl", "w") as f:
    f.write(json.dumps({"step": 0, "compiled": True}) + "\n")  # a row without a loss
    for step, loss in enumerate(losses, start=1):
      f.write(json.dumps({"step": step, "loss": loss}) + "\n")


def test_il_losses_finds_the_plateau_crossing_and_pairs_final_losses(tmp_path):
  # il: 100 steps at 0.3, then 0.0. The 20-step running mean ending at step s holds
  # (120 - s) plateau values once s > 100, so it is < 0.05 from 0.3 * (120 - s) / 20
  # < 0.05, i.e. s >= 117.
  _write(tmp_path / "s0" / "il", [0.3] * 100 + [0.0] * 100)
  _write(tmp_path / "s0" / "act_il", [0.2] * 200)  # never crosses
  out = de.il_losses(tmp_path, seeds=1)
  assert out["il"]["crossed"] == {0: 117}
  assert out["il_w_act"]["crossed"] == {0: None}
  assert out["il"]["final"][0] == 0.0
  assert out["il_w_act"]["final"][0] == pytest.approx(0.2)
  assert out["delta_final"]["per_seed"] == [pytest.approx(0.2)]
