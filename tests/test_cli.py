"""Every command line follows one convention: `python -m act_jax.<module>`, help text on
every argument, defaults shown by --help; the training entries list --config/--workdir."""
import argparse
import importlib
import os
import subprocess
import sys

import pytest

ARGPARSE = ["generate", "hf.__main__", "data.build", "envs.expert", "envs.rollout",
            "tokenizer"]


def _parsers(p, name):
  """The parser and, for a command with subcommands, each subcommand's parser."""
  yield name, p
  for a in p._actions:
    if isinstance(a, argparse._SubParsersAction):
      for sub, sp in a.choices.items():
        yield f"{name} {sub}", sp


@pytest.mark.parametrize("module", ARGPARSE)
def test_every_argument_has_help_and_its_default_shows(module):
  p = importlib.import_module(f"act_jax.{module}").parser()
  assert p.prog == "python -m act_jax." + module.replace(".__main__", "")
  for name, parser in _parsers(p, module):
    text = parser.format_help()
    for a in parser._actions:
      if isinstance(a, argparse._HelpAction):
        continue
      assert a.help, f"{name}: {a.option_strings or a.dest} has no help text"
      assert all(o.startswith("-") and "_" not in o for o in a.option_strings), \
          f"{name}: {a.option_strings}: flags are --kebab-case"
      shown = a.default not in (None, False, "", []) and a.option_strings
      if shown and not isinstance(a, argparse._SubParsersAction):
        assert "(default" in a.help or f"(default: {a.default}" in " ".join(text.split()), \
            f"{name}: {a.option_strings[0]}'s default {a.default!r} is not in --help"


def test_training_entries_list_config_and_workdir():
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  procs = {m: subprocess.Popen([sys.executable, "-m", f"act_jax.{m}", "--help"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for m in ("main", "train")}
  for m, proc in procs.items():
    out, _ = proc.communicate(timeout=120)  # absl's --help exits with status 1
    assert "--config:" in out and "--config.FIELD=VALUE" in out and "--workdir:" in out, out
