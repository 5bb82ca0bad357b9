"""The experiment ConfigDict: shared defaults, section schemas, resolving it into typed pieces.

Every experiment file in `configs/` starts from `base()` (or `critic()`) and changes what
it needs; it imports nothing of act_jax but this module, so configs stay data. The
command line overrides any field (`--config.optim.lr=1e-6`). An optional field is None,
declared with its type (`placeholder`) so that `--config.x=3` still parses. `validate`
checks the GRPO and stage sections when a run starts, naming the field of any error.
"""
from __future__ import annotations

import contextlib
import dataclasses
import typing
from typing import Any, Iterator, Self

import ml_collections
from ml_collections.config_dict import placeholder

from act_jax import presets
from act_jax.losses import grpo as grpo_loss
from act_jax.models import ModelConfig
from act_jax.sharding import DEFAULT_RULES

SCHEDULES = ("cosine", "constant")  # config.optim.schedule: what follows the warmup


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # A named preset (act_jax.presets.MODELS) and/or explicit fields in c.model; explicit
  # fields override the preset's. None: c.model alone.
  c.model_preset = placeholder(str)
  c.model = ml_collections.ConfigDict()
  c.mesh_preset = "auto"
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  c.sharding_rules = [list(r) if not isinstance(r[1], tuple) else [r[0], list(r[1])]
                      for r in DEFAULT_RULES]
  c.optim = ml_collections.ConfigDict(dict(
      # warmup_steps and total_steps count optimiser updates (train.steps x GRPO's mu);
      # total_steps None = the whole run, so the decay ends at the last step whatever
      # train.steps is (see loop.optimizer_config).
      lr=3e-4, warmup_steps=10, total_steps=placeholder(int), schedule="cosine",
      final_lr_frac=0.1, weight_decay=0.0, grad_clip=1.0, b1=0.9, b2=0.95, eps=1e-8))
  c.train = ml_collections.ConfigDict(dict(
      steps=100, batch_size=8, seq_len=64, accum_steps=1, eval_every=0,
      # What the stage trains: "all", or "top:K" (the top K layers and the final norm;
      # the embeddings and the layers below frozen: act_jax.trainable).
      trainable="all",
      # Supervised records mixed into every step against forgetting (data.replay): how
      # many per step (0: none) and the weight of their mean CE beside the stage's loss.
      replay_batch_size=0, replay_weight=1.0,
      # Stop after this many non-finite (skipped) updates in a row; 0 never stops.
      max_nonfinite=5,
      # Per-device peak TFLOP/s for the logged MFU (e.g. 989 H100 bf16 dense, 459 TPU
      # v5p bf16); None leaves MFU out (model_tflops_per_s is always logged).
      peak_tflops=placeholder(float)))
  c.checkpoint = ml_collections.ConfigDict(dict(
      # best_metric: also keep the best step by this logged metric; None: the newest only.
      every=50, keep=3, async_save=True, best_metric=placeholder(str), best_mode="max"))
  c.data = ml_collections.ConfigDict(dict(kind="synthetic"))
  return c


def critic() -> ml_collections.ConfigDict:
  """ACT critic training of a pretrained model (Qwen3-8B, the paper's main model).

  The paper states the model, the prompt shape and "GRPO, rewarded only for selecting
  correctly"; every number below is marked [I] (our inference) here or in `GRPOSection`.
  """
  c = base()
  c.model_preset = "qwen3-8b"
  c.train.update(dict(steps=300, batch_size=32, eval_every=25))
  # ~10k critic pairs / 32 prompts = ~1 epoch in 300 steps [I].
  c.optim.update(dict(lr=1e-6, schedule="constant", warmup_steps=10, weight_decay=0.0,
                      b1=0.9, b2=0.99, grad_clip=1.0))  # full fine-tune [I]
  c.checkpoint.update(dict(every=25, best_metric="eval_accuracy", best_mode="max"))
  c.grpo = grpo()
  c.reward = judgment_reward()
  return c


def grpo(**overrides: Any) -> ml_collections.ConfigDict:
  """A GRPO section: `GRPOSection`'s defaults with `overrides` (checked)."""
  return GRPOSection.from_config(overrides, "config.grpo").to_config()


def stage(**fields: Any) -> ml_collections.ConfigDict:
  """A pipeline stage section (`StageSection`, checked) with every field present, unset
  ones None, so that any of them can be set from the command line
  (`--config.stages.act.replay_batch_size=16`); `grpo` only when given."""
  out = StageSection.from_config(fields, "config.stages.<stage>").to_config()
  if "grpo" not in fields:
    del out["grpo"]
  return out


def judgment_reward() -> ml_collections.ConfigDict:
  """The critic's reward: 1 correct / 0 wrong / 0 unparseable [I] (rewards.JudgmentConfig)."""
  return ml_collections.ConfigDict(dict(name="judgment", correct=1.0, wrong=0.0,
                                        malformed=0.0))


def action_reward() -> ml_collections.ConfigDict:
  """Next-action RL's reward values [S] (rewards.ActionConfig)."""
  return ml_collections.ConfigDict(dict(expert=1.0, admissible=0.1, other=0.0,
                                        malformed=-0.5))


# --- Section schemas ---------------------------------------------------------------------


class Section:
  """A typed, frozen view of one config section.

  `from_config` refuses an unknown field, a wrong type or a value out of range with an
  error naming the field's full path, so a misspelt override fails at start-up instead
  of being ignored. Subclasses are frozen dataclasses listing their `rules()`.
  """

  @classmethod
  def from_config(cls, section: Any, where: str) -> Self:
    if not isinstance(section, (dict, ml_collections.ConfigDict)):
      raise ValueError(f"{where}={section!r}: expected a section (ConfigDict)")
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(section.keys()) - set(hints))
    if unknown:
      raise ValueError(f"{where}: unknown field(s) {unknown}; known: {sorted(hints)}")
    out = cls(**{k: _typed(v, hints[k], f"{where}.{k}") for k, v in section.items()})
    for field, ok, must in out.rules():
      if not ok:
        raise ValueError(f"{where}.{field}={getattr(out, field)!r}: must be {must}")
    return out

  def rules(self) -> Iterator[tuple[str, bool, str]]:
    """(field, whether its value is allowed, what it must be)."""
    raise NotImplementedError

  def to_config(self) -> ml_collections.ConfigDict:
    """As a ConfigDict; a None field keeps its type, so the command line can set it."""
    hints = {k: _base_type(h) for k, h in typing.get_type_hints(type(self)).items()}
    def value(name: str) -> Any:
      v = getattr(self, name)
      if v is None:
        return placeholder(typing.get_origin(hints[name]) or hints[name])
      return v.to_config() if isinstance(v, Section) else v
    return ml_collections.ConfigDict({f.name: value(f.name) for f in dataclasses.fields(self)})


def _base_type(hint: Any) -> Any:
  """`int` for int and `int | None`; `tuple[int, ...]` for `tuple[int, ...] | None`."""
  args = typing.get_args(hint)
  return next(a for a in args if a is not type(None)) if type(None) in args else hint


def _typed(value: Any, hint: Any, where: str) -> Any:
  """`value` checked against `hint` (int, float, str, bool, tuple[T, ...], a Section, or
  any of these `| None`); ints are accepted as floats."""
  if value is None and type(None) in typing.get_args(hint):
    return None
  want = _base_type(hint)
  origin = typing.get_origin(want) or want
  if isinstance(want, type) and issubclass(want, Section):
    return want.from_config(value, where)
  if origin is tuple and isinstance(value, (list, tuple)):
    item = typing.get_args(want)[0]
    return tuple(_typed(v, item, f"{where}[{i}]") for i, v in enumerate(value))
  if origin is float and type(value) in (int, float):
    return float(value)
  if origin in (int, str, bool) and type(value) is origin:  # a bool is no int here
    return value
  raise ValueError(f"{where}={value!r}: expected "
                   f"{hint.__name__ if isinstance(hint, type) else hint}")


@dataclasses.dataclass(frozen=True)
class GRPOSection(Section):
  """A GRPO stage's settings (`config.grpo`; in a pipeline `config.stages.<name>.grpo`).

  [I] = our inference: the ACT paper states none of these.

  estimator: "grpo" samples G completions per prompt (the paper's method, for critics
  that reason); "expected" takes the exact expected reward over the completions that
  are paid (`losses.expected`): the answer strings of a critic that answers without
  reasoning (act), or the admissible actions of a next-action policy that acts without
  reasoning (rl; every record must list them). It samples nothing in training, so group_size, clipping, aggregation, advantage and
  filter_zero_variance do not apply to it, nor does the reasoning budget
  max_new_tokens (it still bounds the greedy evaluation); temperature does (the
  distribution whose expectation it is).
  """
  estimator: str = "grpo"
  group_size: int = 8  # G completions per prompt [I: the usual GRPO choice].
  # mu: on-policy, one update per generation batch [I]. The optimiser schedule
  # (optim.warmup_steps, the decay's length) counts these updates, mu per step.
  updates_per_batch: int = 1
  max_new_tokens: int = 1024  # reasoning budget; a cut-off answer is a format error [I].
  # Sample the model's own distribution [I]. top_k / top_p must stay off: the loss's
  # ratio uses log-probs of the untruncated distribution.
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  eps_low: float = 0.2  # DAPO clip-higher keeps exploration alive [I].
  eps_high: float = 0.28
  beta: float = 1e-3  # KL to the initial model; 0 loads no reference model [I].
  # estimator="expected" only: a bonus on the exact entropy of its answer distribution
  # (the answers and "malformed"), in place of the KL it has no samples to estimate.
  entropy_coef: float = 0.0
  kl_estimator: str = "k3"
  aggregation: str = "token-mean"  # DAPO: long reasoning is not down-weighted [I].
  advantage: str = "grpo"  # (r - mean) / std; "dr_grpo": r - mean.
  filter_zero_variance: bool = True  # groups that all agree carry no signal: masked out.
  eval_batch_size: int = 64  # held-out prompts per greedy evaluation batch (global).
  eos_ids: tuple[int, ...] | None = None  # None: the model config's eos_token_id.
  pad_id: int | None = None  # None: the model config's pad_token_id, else 0.

  def rules(self) -> Iterator[tuple[str, bool, str]]:
    untruncated = ("GRPO needs untruncated sampling; the loss's ratio uses log-probs of the "
                   "full softmax, not of the truncated distribution completions come from")
    yield "estimator", self.estimator in ESTIMATORS, f"one of {ESTIMATORS}"
    yield "group_size", self.group_size >= 2, ">= 2: advantages compare a prompt's samples"
    yield "updates_per_batch", self.updates_per_batch >= 1, ">= 1"
    yield "max_new_tokens", self.max_new_tokens >= 1, ">= 1"
    yield "temperature", self.temperature > 0, "> 0: greedy samples have no behaviour log-probs"
    yield "top_k", self.top_k == 0, f"0: {untruncated}"
    yield "top_p", self.top_p == 1.0, f"1.0: {untruncated}"
    yield "eps_low", 0 <= self.eps_low < 1, "in [0, 1)"
    yield "eps_high", self.eps_high >= 0, ">= 0"
    yield "beta", self.beta >= 0, ">= 0"
    yield "beta", self.estimator != "expected" or self.beta == 0, (
        "0 with estimator='expected': it has no samples to estimate the KL on; "
        "entropy_coef > 0 anchors it with its exact answer entropy instead")
    yield "entropy_coef", self.entropy_coef >= 0, ">= 0"
    yield "entropy_coef", self.estimator == "expected" or self.entropy_coef == 0, (
        "0 with estimator='grpo': the entropy bonus is the expected estimator's")
    yield "kl_estimator", self.kl_estimator in grpo_loss.KL_ESTIMATORS, (
        f"one of {grpo_loss.KL_ESTIMATORS}")
    yield "aggregation", self.aggregation in grpo_loss.AGGREGATIONS, (
        f"one of {grpo_loss.AGGREGATIONS}")
    yield "advantage", self.advantage in grpo_loss.ADVANTAGES.names(), (
        f"a registered estimator, one of {grpo_loss.ADVANTAGES.names()}")
    yield "eval_batch_size", self.eval_batch_size >= 1, ">= 1"
    yield "eos_ids", self.eos_ids != (), "None (the model's) or at least one token id"
    yield "pad_id", self.pad_id is None or self.pad_id >= 0, "None (the model's) or >= 0"


ESTIMATORS = ("grpo", "expected")  # GRPOSection.estimator


def check_estimator(g: GRPOSection, enumerable: bool, where: str) -> None:
  """Refuses `expected` where the paid completions cannot be enumerated: only the
  critic's answers and the next-action stage's admissible actions can."""
  if g.estimator == "expected" and not enumerable:
    raise ValueError(f"{where}.estimator='expected': only the critic (act) and next-action "
                     "RL (rl) stages can take the expectation over their answers or "
                     "admissible actions; use 'grpo'")


@dataclasses.dataclass(frozen=True)
class StageSection(Section):
  """One pipeline stage (`config.stages.<name>`): a field it sets replaces that of
  `config.train` / `config.optim` for the stage; None keeps theirs."""
  steps: int | None = None
  batch_size: int | None = None
  eval_every: int | None = None
  lr: float | None = None
  warmup_steps: int | None = None
  schedule: str | None = None
  trainable: str | None = None  # train.trainable for this stage
  replay_batch_size: int | None = None  # train.replay_*: θ0's random-play action records
  replay_weight: float | None = None  # mixed into every step (pipeline.replay)
  grpo: GRPOSection | None = None  # the GRPO stages' (act, rl) own section
  rollouts_per_game: int | None = None  # base: random-play episodes of the format warm-up
  lm_loss: bool | None = None  # base: also the LM loss on the env's text

  def rules(self) -> Iterator[tuple[str, bool, str]]:
    def at_least(field: str, low: float) -> tuple[str, bool, str]:
      value = getattr(self, field)
      return field, value is None or value >= low, f">= {low}"
    yield from (at_least(f, 0) for f in ("steps", "eval_every", "lr", "warmup_steps",
                                         "rollouts_per_game"))
    yield at_least("batch_size", 1)
    yield at_least("replay_batch_size", 0)
    yield at_least("replay_weight", 0)
    yield "schedule", self.schedule in (None, *SCHEDULES), f"one of {SCHEDULES}"


def validate(c: ml_collections.ConfigDict) -> None:
  """Checks the GRPO and stage sections before a run starts (see `Section`)."""
  if "grpo" in c:
    GRPOSection.from_config(c.grpo, "config.grpo")
  for name, section in c.get("stages", {}).items():
    s = StageSection.from_config(section, f"config.stages.{name}")
    if s.grpo is not None:
      check_estimator(s.grpo, name in ("act", "rl"), f"config.stages.{name}.grpo")


def model_config(c: ml_collections.ConfigDict) -> ModelConfig:
  """The ModelConfig named by `c.model_preset` with `c.model`'s fields on top."""
  preset = c.get("model_preset")
  fields: dict[str, Any] = presets.model(preset) if preset is not None else {}
  fields.update(c.model.to_dict() if isinstance(c.model, ml_collections.ConfigDict)
                else dict(c.model))
  return ModelConfig.from_dict(fields)


def mesh_axes(c: ml_collections.ConfigDict) -> dict[str, int]:
  """`c.mesh_preset` if set to a named layout other than 'auto', else `c.mesh`."""
  if c.get("mesh_preset") and c.mesh_preset != "auto":
    return presets.mesh(c.mesh_preset)
  return dict(c.mesh)


def sharding_rules(c: ml_collections.ConfigDict) -> tuple[tuple[str, Any], ...]:
  return tuple((name, tuple(t) if isinstance(t, (list, tuple)) else t)
               for name, t in c.sharding_rules)


@contextlib.contextmanager
def usage_errors() -> Iterator[None]:
  """Config errors (ValueError naming the field) as absl usage errors: one line, no
  traceback, exit status 1. Wrap only validation, never a run."""
  from absl import app
  try:
    yield
  except ValueError as e:
    raise app.UsageError(str(e)) from None


def define_flags() -> None:
  """`--config FILE[:ARG] [--config.x=y]` and `--workdir DIR` for the entry points.

  Called from `if __name__ == "__main__"` only, so the modules stay importable together.
  The flags are the caller's key flags, so its `--help` lists them.
  """
  from absl import flags
  from ml_collections import config_flags
  flags.disclaim_key_flags()  # attribute the flags below to the module that calls this
  config_flags.DEFINE_config_file(
      "config", None, "Experiment config: FILE[:ARG] (a configs/*.py with get_config); "
      "override any field with --config.FIELD=VALUE, e.g. --config.optim.lr=1e-4.")
  flags.DEFINE_string("workdir", None, "Run directory (local path or gs://); rerunning "
                      "the same command resumes from it.")
  flags.mark_flags_as_required(["config", "workdir"])
