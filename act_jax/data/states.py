"""Expert trajectories to state–action pairs, states truncated to a token budget.

The state at step t is instruction + task + the (observation, action) turns
before t + the observation at t. When it exceeds the budget, the oldest turns go
first; instruction, task and the current observation always stay.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from act_jax.data import prompts
from act_jax.data.report import DropLog
from act_jax.data.trajectory import Trajectory


@dataclasses.dataclass(frozen=True)
class State:
  """One expert decision: the rendered (truncated) state and the action taken."""
  state_id: str
  source: str
  text: str
  expert_action: str
  admissible: tuple[str, ...] | None
  step: int
  omitted_turns: int
  num_tokens: int


def count_tokens(tokenizer: Any, texts: Sequence[str]) -> list[int]:
  """Token counts without special tokens, batched (the fast tokenizer threads it)."""
  if not texts:
    return []
  return [len(ids) for ids in
          tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def kept_turns(fixed: int, turn_tokens: Sequence[int], marker: int,
               budget: int) -> int:
  """How many of the most recent turns fit: fixed + marker (if any cut) + turns."""
  n = len(turn_tokens)
  total = fixed + sum(turn_tokens)
  if total <= budget:
    return n
  total += marker
  for k in range(n, 0, -1):
    if total <= budget:
      return k
    total -= turn_tokens[n - k]
  return 0


def trajectory_states(traj: Trajectory, traj_id: str, tokenizer: Any,
                      cfg: prompts.PromptConfig,
                      max_state_tokens: int | None = None,
                      drops: DropLog | None = None,
                      notes: DropLog | None = None,
                      steps: Sequence[int] | None = None) -> list[State]:
  """All states of one trajectory (`steps`: only those steps').

  Token counts per segment choose how many turns fit; the rendered state is then
  counted exactly and shortened further if BPE merges across segments added any.
  States whose fixed part alone exceeds the budget are kept whole and noted.
  """
  drops = drops if drops is not None else DropLog()
  head = prompts.state_head(traj.instruction, traj.task, cfg)
  turns = [prompts.history_turn(s.observation, s.action, s.thought, cfg)
           for s in traj.steps[:-1]]
  currents = [prompts.current_turn(s.observation, cfg) for s in traj.steps]
  if max_state_tokens is not None:
    counts = count_tokens(tokenizer, [head, prompts.omitted_marker(999, cfg)]
                          + turns + currents)
    head_n, marker_n = counts[:2]
    turn_ns, current_ns = counts[2:2 + len(turns)], counts[2 + len(turns):]
  states = []
  for t in range(len(traj.steps)) if steps is None else steps:
    step, where = traj.steps[t], f"{traj_id}/{t}"
    if not step.action.strip():
      drops.drop("state/empty_expert_action", where)
      continue
    k = t
    if max_state_tokens is not None:
      k = kept_turns(head_n + current_ns[t], turn_ns[:t], marker_n,
                     max_state_tokens)
    while True:
      text = prompts.render_state(head, turns[t - k:t], t - k, currents[t], cfg)
      n = count_tokens(tokenizer, [text])[0]
      if max_state_tokens is None or n <= max_state_tokens or k == 0:
        break
      k -= 1
    if max_state_tokens is not None and n > max_state_tokens and notes is not None:
      notes.drop("state/over_budget_kept", where)
    states.append(State(
        state_id=where, source=traj.source, text=text,
        expert_action=step.action.strip(),
        admissible=tuple(step.admissible) if step.admissible is not None else None,
        step=t, omitted_turns=t - k, num_tokens=n))
  return states


def current_state(traj: Trajectory, traj_id: str, tokenizer: Any, cfg: prompts.PromptConfig,
                  max_state_tokens: int | None = None) -> State:
  """The state of a trajectory's last step, whose action is being chosen (it must be
  set): what a policy is shown. Only that state is rendered and counted; rendering
  every earlier one too made a policy's prompts quadratic in the episode's length."""
  if not traj.steps[-1].action.strip():
    raise ValueError(f"{traj_id}: the current step's action must be set (any placeholder)")
  (state,) = trajectory_states(traj, traj_id, tokenizer, cfg, max_state_tokens,
                               steps=[len(traj.steps) - 1])
  return state


def trajectory_ids(trajectories: Sequence[Trajectory]) -> list[str]:
  """Stable, unique ids: the record's own id where it has one, else its index."""
  ids, seen = [], set()
  for i, traj in enumerate(trajectories):
    ident = str(traj.meta.get("id", traj.meta.get("item_id", ""))) or f"traj{i}"
    if ident in seen:
      ident = f"{ident}~{i}"
    seen.add(ident)
    ids.append(ident)
  return ids
