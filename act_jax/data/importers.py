"""Reads expert trajectories into the project schema (`trajectory.Trajectory`).

    python -m act_jax.data.importers sciworld_sft.json [more.json] --out FILE.jsonl

converts public conversation-format sets to our JSONL (FILE may be gs://), printing
what was dropped; the pipeline reads it with --config.pipeline.trajectories=FILE.

Two inputs: our own JSONL schema, and the conversation format public agent-SFT
sets use for ALFWorld, WebShop and ScienceWorld (AgentInstruct, AgentTraj, ETO):
`{"conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}]}` or
`{"messages": [{"role": "user", "content": ...}, ...]}`. There the first human
turn holds the instructions (and possibly the task), an assistant turn without
`Action:` is an acknowledgement ("OK"), and every assistant turn with one is a
step whose observation is the human text since the previous step.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Iterator, Literal, Sequence

from act_jax import parsing, storage
from act_jax.data.report import DropLog
from act_jax.data.trajectory import Step, Trajectory

Format = Literal["auto", "conversations", "act_jax"]
_TURN_KEYS = ("conversations", "messages", "conversation")


@dataclasses.dataclass(frozen=True)
class ConversationFormat:
  """How to read a conversation-format trajectory; the defaults fit public sets."""
  user_roles: tuple[str, ...] = ("human", "user", "observation", "environment",
                                 "tool")
  assistant_roles: tuple[str, ...] = ("gpt", "assistant", "model", "bot", "agent")
  system_roles: tuple[str, ...] = ("system",)
  action_pattern: str = parsing.ACTION_PATTERN
  thought_prefix: str = r"(?i)^\s*thought\s*:\s*"
  # (regex with one group = the task, whether to cut the match from the
  # observation). Tried on the human turns before the first action, last first.
  # The group keeps the "Your task is to" phrase: the live environments' task text
  # starts with it, and prompts render the task verbatim, so imported and live
  # prompts are the same bytes.
  task_patterns: tuple[tuple[str, bool], ...] = (
      (r"(?im)^[ \t]*(your task is to\b.*?\S)[ \t]*$", True),
      (r"(?im)^[ \t]*task:[ \t]*(\S.*?)[ \t]*$", True),
      (r"(?i)instruction:\s*\[SEP\]\s*(.+?)\s*\[SEP\]", False),
  )
  # Stripped from the start of each observation.
  observation_prefixes: tuple[str, ...] = (r"(?i)^\s*here is your task\.?\s*",
                                           r"(?i)^\s*observation:\s*")


# --- Reading records ----------------------------------------------------------


def iter_records(path: str) -> Iterator[tuple[str, Any]]:
  """Yields (where, record) from a JSONL file or a JSON array; where = file:line."""
  text = storage.read_text(path)  # local or gs://
  if text.lstrip().startswith("["):
    try:
      records = json.loads(text)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{e.lineno}: bad JSON: {e.msg}") from e
    for i, rec in enumerate(records):
      yield f"{path}:record {i}", rec
    return
  for lineno, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    try:
      rec = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{lineno}: bad JSON: {e.msg}") from e
    yield f"{path}:{lineno}", rec


def detect_format(record: Any) -> Literal["conversations", "act_jax"] | None:
  if isinstance(record, list):
    return "conversations"
  if isinstance(record, dict):
    if "steps" in record:
      return "act_jax"
    if any(k in record for k in _TURN_KEYS):
      return "conversations"
  return None


def load_trajectories(paths: str | Sequence[str], format: Format = "auto",
                      conv: ConversationFormat = ConversationFormat(),
                      drops: DropLog | None = None,
                      errors: Literal["raise", "skip"] = "raise",
                      ) -> list[Trajectory]:
  """Reads trajectories from files; malformed records raise (or, with
  errors="skip", are counted in `drops`), empty trajectories are counted."""
  drops = drops if drops is not None else DropLog()
  paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
  out = []
  for path in paths:
    for where, rec in iter_records(str(path)):
      try:
        fmt = format if format != "auto" else detect_format(rec)
        if fmt == "act_jax":
          traj = _from_act_jax(rec, where)
        elif fmt == "conversations":
          traj = conversation_to_trajectory(rec, conv, where, drops)
        else:
          raise ValueError(f"{where}: cannot detect the format: expected a "
                           f"'steps' or one of {_TURN_KEYS} key")
      except ValueError:
        if errors == "raise":
          raise
        drops.drop("trajectory/malformed", where)
        continue
      if not traj.steps:
        drops.drop("trajectory/empty", where)
        continue
      traj.meta.setdefault("where", where)
      out.append(traj)
  return out


def _from_act_jax(rec: Any, where: str) -> Trajectory:
  if not isinstance(rec, dict):
    raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
  traj = Trajectory.from_dict(rec, where=where)
  for i, s in enumerate(traj.steps):
    if not isinstance(s.action, str) or not isinstance(s.observation, str):
      raise ValueError(f"{where}: step {i}: action and observation must be strings")
  return traj


# --- Conversation format -------------------------------------------------------


def _turns(rec: Any, conv: ConversationFormat, where: str) -> list[tuple[str, str]]:
  """Normalises turns to (role, text) with role in {system, user, assistant}."""
  raw = rec
  if isinstance(rec, dict):
    key = next((k for k in _TURN_KEYS if k in rec), None)
    if key is None:
      raise ValueError(f"{where}: missing field: one of {_TURN_KEYS}")
    raw = rec[key]
  if not isinstance(raw, list):
    raise ValueError(f"{where}: turns must be a list, got {type(raw).__name__}")
  turns = []
  for i, t in enumerate(raw):
    if not isinstance(t, dict):
      raise ValueError(f"{where}: turn {i} is not an object")
    role = t.get("from", t.get("role"))
    text = t.get("value", t.get("content"))
    if role is None or text is None:
      raise ValueError(f"{where}: turn {i}: missing field 'from'/'role' or "
                       "'value'/'content'")
    if not isinstance(text, str):
      raise ValueError(f"{where}: turn {i}: text must be a string")
    role = str(role).lower()
    if role in conv.user_roles:
      turns.append(("user", text))
    elif role in conv.assistant_roles:
      turns.append(("assistant", text))
    elif role in conv.system_roles:
      turns.append(("system", text))
    else:
      raise ValueError(f"{where}: turn {i}: unknown role {role!r}")
  return turns


def _strip_prefixes(text: str, conv: ConversationFormat) -> str:
  for p in conv.observation_prefixes:
    text = re.sub(p, "", text, count=1)
  return text.strip()


def _find_task(texts: Sequence[str], conv: ConversationFormat):
  """(turn index, match, cut) of the last task match, searching later turns first."""
  for j in reversed(range(len(texts))):
    for pattern, cut in conv.task_patterns:
      matches = list(re.finditer(pattern, texts[j]))
      if matches:
        return j, matches[-1], cut
  return None


def conversation_to_trajectory(rec: Any, conv: ConversationFormat = ConversationFormat(),
                               where: str = "<record>",
                               drops: DropLog | None = None) -> Trajectory:
  """Converts one conversation-format record into a `Trajectory`."""
  drops = drops if drops is not None else DropLog()
  turns = _turns(rec, conv, where)
  system = "\n\n".join(t for r, t in turns if r == "system")
  turns = [(r, t) for r, t in turns if r != "system"]
  parsed = [parsing.split_action(t, conv.action_pattern) if r == "assistant"
            else (None, t) for r, t in turns]
  first = next((i for i, (r, _) in enumerate(turns)
                if r == "assistant" and parsed[i][0] is not None), len(turns))
  if first == len(turns):  # No action at all: an empty trajectory, counted later.
    return Trajectory(task="", steps=[], meta={"where": where})
  pre = [t for r, t in turns[:first] if r == "user"]
  if not pre:
    raise ValueError(f"{where}: no human turn before the first action")

  # Instruction, task and the first observation, from the turns before step 0.
  found = _find_task(pre, conv)
  if len(pre) == 1:
    text = pre[0]
    if found and found[2]:
      m = found[1]
      instruction, task, first_obs = text[:m.start()].strip(), m.group(1), text[m.end():]
    elif found:
      instruction, task, first_obs = "", found[1].group(1), text
    else:  # The one turn is instructions and task at once: keep it whole.
      instruction, task, first_obs = "", text.strip(), ""
  else:
    instruction, rest = pre[0].strip(), list(pre[1:])
    if found and found[0] > 0 and found[2]:  # Cut the task line from its turn.
      j, m, _ = found
      rest[j - 1] = rest[j - 1][:m.start()] + rest[j - 1][m.end():]
    rest = "\n".join(_strip_prefixes(t, conv) for t in rest)
    if found:
      task, first_obs = found[1].group(1), rest
    else:  # The second human turn is the task (ALFWorld-style without a marker).
      task, first_obs = rest, ""
  if system:
    instruction = (system + "\n\n" + instruction).strip()

  steps, pending = [], [_strip_prefixes(first_obs, conv)]
  for i in range(first, len(turns)):
    role, text = turns[i]
    if role == "user":
      pending.append(_strip_prefixes(text, conv))
      continue
    action, before = parsed[i]
    if action is None:
      drops.drop("turn/assistant_without_action", where)
      continue
    thought = re.sub(conv.thought_prefix, "", before).strip() or None
    steps.append(Step(observation="\n".join(p for p in pending if p),
                      action=action, thought=thought))
    pending = []

  meta = {k: v for k, v in rec.items()
          if k not in _TURN_KEYS and isinstance(v, (str, int, float, bool))
          } if isinstance(rec, dict) else {}
  final = "\n".join(p for p in pending if p)
  if final:
    meta["final_observation"] = final
  ident = str(meta.get("id", meta.get("item_id", "")))
  source = str(meta.get("source", "")) or (
      re.match(r"[A-Za-z]+", ident).group(0).lower()
      if re.match(r"[A-Za-z]+", ident) else "")
  success = meta.get("success", True)
  return Trajectory(task=task.strip(), steps=steps, instruction=instruction,
                    success=bool(success), source=source, meta=meta)


# --- Keeping evaluation episodes out of imported training data ----------------


def _norm(text: str) -> str:
  return " ".join(text.lower().split())


def _variation(t: Trajectory) -> tuple[str, str] | None:
  """(task type, variation) when a trajectory says which episode it is: our own
  expert data (`meta.game`/`meta.seed`) or an import carrying those fields."""
  m = t.meta
  game = m.get("game", m.get("task_name"))
  var = m.get("seed", m.get("variation", m.get("variation_idx")))
  return (str(game), str(var)) if game is not None and var is not None else None


def drop_heldout(train: Sequence[Trajectory], heldout: Sequence[Trajectory]
                 ) -> tuple[list[Trajectory], list[Trajectory]]:
  """(kept, dropped): imported training trajectories minus every one that may be an
  evaluation episode. A trajectory is dropped when its task text is that of a
  held-out one, unless both name their (task, variation) and these differ (many
  ScienceWorld tasks read the same in every variation); or when it names a held-out
  (task, variation). When in doubt it is dropped: an evaluation episode trained on
  would inflate every result."""
  by_task: dict[str, set[tuple[str, str] | None]] = {}
  for t in heldout:
    by_task.setdefault(_norm(t.task), set()).add(_variation(t))
  held_vars = {_variation(t) for t in heldout} - {None}
  kept, dropped = [], []
  for t in train:
    var = _variation(t)
    same_task = by_task.get(_norm(t.task))
    clash = (var in held_vars or
             (same_task is not None and (var is None or None in same_task or var in same_task)))
    (dropped if clash else kept).append(t)
  return kept, dropped


def main(argv: Sequence[str] | None = None) -> None:
  """The conversion CLI (see the module docstring)."""
  import argparse
  p = argparse.ArgumentParser(prog="python -m act_jax.data.importers",
                              description="Convert expert trajectories to act_jax JSONL.")
  p.add_argument("inputs", nargs="+", help="JSON / JSONL files (local or gs://)")
  p.add_argument("--out", required=True, help="output JSONL (local or gs://)")
  args = p.parse_args(argv)
  drops = DropLog()
  trajs = load_trajectories(args.inputs, drops=drops, errors="skip")
  storage.write_text(args.out, "".join(t.to_json() + "\n" for t in trajs))
  print(f"{args.out}: {len(trajs)} trajectories, {sum(len(t.steps) for t in trajs)} steps; "
        f"dropped:\n{drops.summary()}")


if __name__ == "__main__":
  main()
