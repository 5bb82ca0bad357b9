"""Builds the critic and imitation datasets from expert trajectories (ACT stage 1).

  python -m act_jax.data.build --trajectories data/alfworld_sft.json \\
      --tokenizer DIR --alternatives admissible --k 4 --out DIR

Writes OUT/critic_pairs/<VERSION> and OUT/imitation_pairs/<VERSION> (array_record, read
with `builders.load_source`) and OUT/build_report.json; prints what was dropped
(lost) and why, what was noted (nothing lost: e.g. the expert's own action among the
candidates), then `trajectories=N states=N pairs=N dropped=N`.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import shutil
import sys
import time
from typing import Any, Sequence

import tqdm

from act_jax import cli
from act_jax.data import alternatives as alt_lib
from act_jax.data import builders, examples, importers, prompts, states as states_lib
from act_jax.data.report import DropLog
from act_jax.data.trajectory import Trajectory

FORMAT_VERSION = 1


@dataclasses.dataclass
class BuildReport:
  """What a build made; `drops` counts what was lost, `notes` what was left out or
  flagged without loss (build_report.json: "dropped" is `drops.total`)."""
  trajectories: int
  states: int
  pairs: int
  drops: DropLog
  notes: DropLog
  seconds: float = 0.0
  dirs: dict[str, str] = dataclasses.field(default_factory=dict)

  def line(self) -> str:
    return (f"trajectories={self.trajectories} states={self.states} "
            f"pairs={self.pairs} dropped={self.drops.total}")

  def to_dict(self) -> dict[str, Any]:
    return {"trajectories": self.trajectories, "states": self.states,
            "pairs": self.pairs, "dropped": self.drops.total,
            "drops": self.drops.to_dict(), "notes": self.notes.to_dict(),
            "seconds": round(self.seconds, 3), "dirs": self.dirs}


def policy_sample_fn(model_dir: str) -> alt_lib.SampleFn:
  """Hook for `--alternatives policy`: the initial model's sampler.

  Expects `act_jax.sampling.make_sample_fn(model_dir) -> SampleFn`; imported
  lazily so the admissible path never needs the model stack.
  """
  try:
    sampling = importlib.import_module("act_jax.sampling")
  except ModuleNotFoundError as e:
    if e.name != "act_jax.sampling":
      raise
    raise RuntimeError(
        "--alternatives policy samples the initial model through "
        "act_jax.sampling, which does not exist yet. Use --alternatives "
        "admissible, or pass a sample_fn to build_datasets().") from e
  make = getattr(sampling, "make_sample_fn", None)
  if make is None:
    raise RuntimeError("act_jax.sampling has no make_sample_fn(model_dir) -> SampleFn")
  return make(model_dir)


def build_states(trajectories: Sequence[Trajectory], tokenizer: Any,
                 prompt_cfg: prompts.PromptConfig, max_state_tokens: int | None,
                 drops: DropLog, notes: DropLog, progress: bool = False
                 ) -> list[states_lib.State]:
  """Every expert decision of every trajectory, in order."""
  out = []
  ids = states_lib.trajectory_ids(trajectories)
  for traj, ident in tqdm.tqdm(list(zip(trajectories, ids)), desc="states",
                               disable=not progress):
    out.extend(states_lib.trajectory_states(traj, ident, tokenizer, prompt_cfg,
                                            max_state_tokens, drops, notes))
  return out


def build_datasets(trajectories: Sequence[Trajectory], tokenizer: Any,
                   out_dir: str, *,
                   prompt_cfg: prompts.PromptConfig = prompts.PromptConfig(),
                   alt_cfg: alt_lib.AlternativesConfig = alt_lib.AlternativesConfig(),
                   max_state_tokens: int | None = None,
                   sample_fn: alt_lib.SampleFn | None = None,
                   drops: DropLog | None = None,
                   config: dict[str, Any] | None = None,
                   progress: bool = False) -> BuildReport:
  """Trajectories → states → alternatives → both TFDS datasets under out_dir."""
  start = time.perf_counter()
  drops = drops if drops is not None else DropLog()
  notes = DropLog()
  states = build_states(trajectories, tokenizer, prompt_cfg, max_state_tokens,
                        drops, notes, progress)
  if alt_cfg.source == "admissible":
    alts = alt_lib.admissible_alternatives(states, alt_cfg, drops, notes)
  elif alt_cfg.source == "policy":
    if sample_fn is None:
      raise ValueError("alternatives from the policy need a sample_fn")
    with tqdm.tqdm(total=len(states), desc="sampling", disable=not progress) as bar:
      alts = alt_lib.policy_alternatives(states, sample_fn, tokenizer, prompt_cfg,
                                         alt_cfg, drops, notes, on_batch=bar.update)
  else:
    raise ValueError(f"unknown alternatives source {alt_cfg.source!r}")
  pairs = sum(len(a) for a in alts)
  report = BuildReport(trajectories=len(trajectories), states=len(states),
                       pairs=pairs, drops=drops, notes=notes)
  metadata = {
      "format_version": FORMAT_VERSION, **(config or {}),
      "alternatives": dataclasses.asdict(alt_cfg),
      "max_state_tokens": max_state_tokens,
      "tokenizer": {"name_or_path": str(getattr(tokenizer, "name_or_path", "")),
                    "vocab_size": len(tokenizer)},
      "prompts": prompt_cfg.to_dict(),
      "counts": {"trajectories": report.trajectories, "states": report.states,
                 "pairs": report.pairs},
      "drops": drops.to_dict(),
  }
  critic = examples.critic_records(states, alts, tokenizer, prompt_cfg,
                                   alt_cfg.seed, alt_cfg.source)
  imitation = examples.imitation_records(states, tokenizer, prompt_cfg)
  for cls, records, total in ((builders.CriticPairs, critic, pairs),
                              (builders.ImitationPairs, imitation, len(states))):
    if not total:  # TFDS cannot write an empty split; the report says why.
      logging.warning("%s: no records, not written", cls.name)
      shutil.rmtree(builders.dataset_dir(out_dir, cls.name), ignore_errors=True)
      continue
    records = tqdm.tqdm(records, total=total, desc=cls.name, disable=not progress)
    report.dirs[cls.name] = builders.write_dataset(cls, out_dir, records, metadata)
    for field in cls.PADDED_FIELDS:  # Cache lengths so training starts fast.
      builders.load_lengths(out_dir, cls.name, field)
  report.seconds = time.perf_counter() - start
  with open(os.path.join(out_dir, "build_report.json"), "w") as f:
    json.dump({**report.to_dict(), "config": metadata}, f, indent=2)
  return report


def parser() -> argparse.ArgumentParser:
  p = cli.parser("data.build", __doc__)
  p.add_argument("--trajectories", nargs="+", required=True,
                 help="JSON/JSONL files of expert trajectories")
  p.add_argument("--format", default="auto",
                 choices=["auto", "conversations", "act_jax"],
                 help="trajectory file format (auto: by its content)")
  p.add_argument("--alternatives", default="admissible",
                 choices=["admissible", "policy"],
                 help="critic alternatives: other admissible actions, or samples from --model")
  p.add_argument("--model", help="initial model dir (for --alternatives policy)")
  p.add_argument("--tokenizer", help="HF tokenizer dir (default: --model)")
  p.add_argument("--k", type=int, default=4, help="alternatives per state")
  p.add_argument("--max-state-tokens", type=int, default=None,
                 help="truncate a state's history to this many tokens (default: no limit)")
  p.add_argument("--seed", type=int, default=0,
                 help="seed of the alternatives drawn and the A/B positions")
  p.add_argument("--temperature", type=float, default=1.0,
                 help="sampling temperature of --alternatives policy")
  p.add_argument("--case-sensitive", action="store_true",
                 help="the environment distinguishes actions by case")
  p.add_argument("--require-admissible", action="store_true",
                 help="policy: reject samples outside step.admissible")
  p.add_argument("--sample-batch-size", type=int, default=64,
                 help="prompts per sampler call (--alternatives policy)")
  p.add_argument("--prompts", help="JSON file overriding PromptConfig fields")
  p.add_argument("--errors", default="raise", choices=["raise", "skip"],
                 help="malformed records: stop, or count and skip")
  p.add_argument("--out", required=True, help="output directory of the datasets")
  return p


def main(argv: Sequence[str] | None = None) -> BuildReport:
  args = parser().parse_args(argv)
  tok_dir = args.tokenizer or args.model
  if not tok_dir:
    raise SystemExit("--tokenizer (or --model) is required")
  if args.alternatives == "policy" and not args.model:
    raise SystemExit("--alternatives policy needs --model")
  import transformers  # Heavy; only the command needs it.
  builders.tfds.disable_progress_bar()  # Ours (tqdm) counts the records.
  tokenizer = transformers.AutoTokenizer.from_pretrained(tok_dir)
  prompt_cfg = prompts.PromptConfig()
  if args.prompts:
    with open(args.prompts) as f:
      prompt_cfg = prompts.PromptConfig.from_dict(json.load(f))
  alt_cfg = alt_lib.AlternativesConfig(
      source=args.alternatives, k=args.k, temperature=args.temperature,
      case_insensitive=not args.case_sensitive,
      require_admissible=args.require_admissible,
      sample_batch_size=args.sample_batch_size, seed=args.seed)
  sample_fn = policy_sample_fn(args.model) if args.alternatives == "policy" else None
  drops = DropLog()
  trajectories = importers.load_trajectories(args.trajectories, args.format,
                                             drops=drops, errors=args.errors)
  os.makedirs(args.out, exist_ok=True)
  config = {"trajectories": [os.path.abspath(p) for p in args.trajectories],
            "format": args.format, "seed": args.seed, "model": args.model}
  report = build_datasets(trajectories, tokenizer, args.out, prompt_cfg=prompt_cfg,
                          alt_cfg=alt_cfg, max_state_tokens=args.max_state_tokens,
                          sample_fn=sample_fn, drops=drops, config=config,
                          progress=True)
  print(f"built in {report.seconds:.1f}s: " + ", ".join(
      f"{k} -> {v}" for k, v in report.dirs.items()))
  print("dropped, by reason:\n" + drops.summary())
  if report.notes.total:
    print("noted, nothing lost:\n" + report.notes.summary())
  print(report.line())
  return report


if __name__ == "__main__":
  main(sys.argv[1:])
