"""Which parameters a stage trains (`config.train.trainable`), and the split that follows.

  all     every parameter (the default)
  top:K   the top K decoder layers and the final norm (and an untied output head);
          the embeddings and the layers below stay as loaded

Layers are stacked on a leading axis, so `top:K` cuts each stacked array at layer
L - K: `split` returns the trainable slice (what the optimiser sees: frozen parameters
get no moments) and the frozen rest, and `join` writes an updated trainable slice back
into the full tree (the train state keeps the full model, so sampling, evaluation,
checkpoints and HF export see one model). Differentiating with respect to the
trainable slice alone is what stops gradients below the first trainable layer: the
frozen layers' forward is a constant to the backward pass, and with a prefix cache
(`act_jax.data.prefix_cache`) it is not run at all.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax

Params = dict[str, Any]
KINDS = ("all", "top")


@dataclasses.dataclass(frozen=True)
class Trainable:
  """A parsed `train.trainable`; `first_layer` is the lowest trained layer's index."""
  kind: str = "all"
  k: int = 0
  num_layers: int = 0

  @classmethod
  def parse(cls, spec: str, num_layers: int) -> "Trainable":
    kind, _, arg = str(spec).partition(":")
    if kind == "all" and not arg:
      return cls("all", num_layers, num_layers)
    if kind == "top" and arg.isdigit() and 1 <= int(arg) <= num_layers:
      return cls("top", int(arg), num_layers)
    raise ValueError(f"config.train.trainable={spec!r}: expected 'all' or 'top:K' with "
                     f"1 <= K <= {num_layers} (the model's layers)")

  @property
  def first_layer(self) -> int:
    return self.num_layers - self.k

  @property
  def frozen_prefix(self) -> bool:
    """Whether the lowest layers (and the embeddings) are frozen."""
    return self.kind != "all"

  def split(self, params: Params, cut: bool = True) -> tuple[Params, Params]:
    """(trainable, frozen) halves of the full parameter tree.

    cut=False splits a tree shaped like the params without slicing its layer leaves
    (shardings, logical axes: a slice keeps its array's layout)."""
    if not self.frozen_prefix:
      return params, {}
    s = self.first_layer
    below = (lambda a: a[:s]) if cut else (lambda a: a)
    above = (lambda a: a[s:]) if cut else (lambda a: a)
    layers = params["layers"]
    train = {k: v for k, v in params.items() if k not in ("embed", "layers")}
    train["layers"] = jax.tree.map(above, layers)
    frozen = {"embed": params["embed"], "layers": jax.tree.map(below, layers)}
    return train, frozen

  def join(self, params: Params, train: Params) -> Params:
    """`params` with its trainable part replaced by `train` (frozen leaves untouched)."""
    if not self.frozen_prefix:
      return train
    s = self.first_layer
    out = {**params, **{k: v for k, v in train.items() if k != "layers"}}
    out["layers"] = jax.tree.map(lambda full, top: full.at[s:].set(top),
                                 params["layers"], train["layers"])
    return out

  def top_model(self, train: Params, frozen: Params) -> Params:
    """The parameters of the model above the frozen prefix: the trainable layers, the
    final norm and the output head (the frozen embeddings, when tied)."""
    if not self.frozen_prefix:
      return train
    return {"embed": frozen["embed"], **train}
