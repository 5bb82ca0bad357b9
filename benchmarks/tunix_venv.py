#!/usr/bin/env python
"""The Tunix side of the benchmarks: one pinned virtualenv, made the same way for all.

Tunix 0.1.7 pins other versions than act_jax, so it runs in its own virtualenv,
benchmarks/.venv-tunix. Every benchmark that runs Tunix (sampler.py, train_step.py,
finetune.py, decode_profile.py --side tunix) calls `python()`: the venv's interpreter,
the venv created and installed with PINS on first use (a few minutes; pip needs the
package index), then reused. Standard library only: the Tunix venv imports it too.

    python benchmarks/tunix_venv.py --dry-run   # what would be created, and where
    python benchmarks/tunix_venv.py             # create it now (or say it exists)
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / "benchmarks" / ".venv-tunix"
# libtpu: what jax[tpu]==0.10.2 pins, for tpu_aot.py's deviceless TPU compile (unused on CPU).
PINS = ("google-tunix==0.1.7", "jax==0.10.2", "flax==0.12.8", "libtpu==0.0.42.*")
BASELINE = ROOT / "benchmarks" / "tunix_baseline.py"  # the sampler and GRPO step of Tunix


def commands(venv: Path = VENV) -> list[list[str]]:
  """The commands that create `venv` with PINS; none when it already has an interpreter."""
  python = venv / "bin" / "python"
  if python.exists():
    return []
  return [[sys.executable, "-m", "venv", str(venv)],
          [str(python), "-m", "pip", "install", "-q", *PINS]]


def python(venv: Path = VENV) -> Path:
  """The Tunix venv's interpreter, creating the venv first if it is missing."""
  for cmd in commands(venv):
    print(f"[tunix] {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, check=True)
  return venv / "bin" / "python"


def add_arguments(ap: argparse.ArgumentParser) -> None:
  """The flags every Tunix-running benchmark takes."""
  ap.add_argument("--tunix-venv", type=Path, default=VENV,
                  help=f"Tunix virtualenv, created with {' '.join(PINS)} if missing")
  ap.add_argument("--skip-tunix", action="store_true", help="measure act_jax only")


def running_in(venv: Path = VENV) -> bool:
  """Whether this interpreter is the venv's."""
  return Path(sys.prefix).resolve() == venv.resolve()


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  ap.add_argument("--venv", type=Path, default=VENV, help="where the venv lives")
  ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
  args = ap.parse_args()
  todo = commands(args.venv)
  if not todo:
    print(f"{args.venv} exists: reused as is")
  elif args.dry_run:
    print("\n".join("would run: " + " ".join(cmd) for cmd in todo))
  else:
    python(args.venv)


if __name__ == "__main__":
  main()
