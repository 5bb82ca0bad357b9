"""One convention for the argparse entry points (generate, hf, data.build, the env and
tokenizer tools, results): `python -m act_jax.<module>`, --kebab-case flags, every
argument with help text, and `--help` showing each default.

The training entry points (`act_jax.main`, `act_jax.train`) take absl flags instead:
`--config FILE[:ARG]` with `--config.FIELD=VALUE` overrides and `--workdir DIR`
(`config_lib.define_flags`).
"""
from __future__ import annotations

import argparse


class _Formatter(argparse.RawDescriptionHelpFormatter):
  """Keeps the description's line breaks and appends "(default: X)" to an option's help,
  unless there is none to show (None, False, empty) or the help already says it."""

  def _get_help_string(self, action: argparse.Action) -> str:
    text = action.help or ""
    d = action.default
    if (d is None or d is False or d in ([], "") or d is argparse.SUPPRESS
        or not action.option_strings or "(default" in text):
      return text
    return text + " (default: %(default)s)"


def parser(module: str, description: str) -> argparse.ArgumentParser:
  """The parser of `python -m act_jax.<module>`."""
  return argparse.ArgumentParser(prog=f"python -m act_jax.{module}", description=description,
                                 formatter_class=_Formatter)


def subcommand(sub: argparse._SubParsersAction, name: str, help: str
               ) -> argparse.ArgumentParser:
  """A subcommand's parser, with the same help formatting and its help as description."""
  return sub.add_parser(name, help=help, description=help, formatter_class=_Formatter)
