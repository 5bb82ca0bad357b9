"""One parser per answer format, shared by rewards, evaluation, data building and rollouts.

A completion the reward counts as the expert's action is the one evaluation counts as
correct and data building rejects as a duplicate of the expert: all of them parse and
compare through this module. Patterns and letters are the defaults of
`prompts.PromptConfig` and of the reward configs.
"""
from __future__ import annotations

import re

ACTION_PATTERN = r"(?i)\baction\s*:"
ANSWER_PATTERN = r"(?i)\banswer\s*:\s*\**\s*\(?([A-Za-z])\b"
LETTERS = ("A", "B")
REASONING_START, REASONING_END = "<think>", "</think>"

# Judgment parse outcomes; everything but OK is a format error.
OK, MISSING, NOT_FINAL, INVALID, AMBIGUOUS, UNFINISHED = (
    "ok", "missing", "not_final", "invalid", "ambiguous", "unfinished")

_MARKUP = "`'\"* "


def normalize_action(action: str, case_insensitive: bool = True) -> str:
  """The form two actions are compared in: `**"Take  apple."**` is `take apple`.

  Spacing, quotes, markdown and trailing full stops never make a different action;
  case does not either in the envs we run (ALFWorld, ScienceWorld, TextWorldExpress).
  """
  a = " ".join(action.split()).lstrip(_MARKUP).rstrip(_MARKUP + ".")
  return a.lower() if case_insensitive else a


def strip_reasoning(text: str, start: str = REASONING_START,
                    end: str = REASONING_END) -> str | None:
  """The text after the reasoning block; None if a block was opened but never closed.

  With thinking models the answer must follow `</think>`: an answer written inside
  an unfinished block (a length-truncated completion) does not count.
  """
  if end and end in text:
    return text.rsplit(end, 1)[1]
  if start and start in text:
    return None
  return text


def split_action(text: str, pattern: str = ACTION_PATTERN) -> tuple[str | None, str]:
  """Returns (action, text before it): the first non-empty line after the last marker.

  Models and datasets write both `Action: go to desk 1` and `Action:\\ngo to desk 1`.
  """
  matches = list(re.finditer(pattern, text))
  if not matches:
    return None, text
  last = matches[-1]
  lines = [l.strip() for l in text[last.end():].splitlines()]
  action = next((l for l in lines if l), None)
  return action, text[:last.start()]


def parse_action(text: str, pattern: str = ACTION_PATTERN, *,
                 reasoning_start: str = REASONING_START,
                 reasoning_end: str = REASONING_END) -> str | None:
  """The action a completion names, markup stripped and case kept; None if it names none.

  Case is kept because the action may be sent to an environment as it is.
  """
  body = strip_reasoning(text, reasoning_start, reasoning_end)
  if body is None:
    return None
  action = split_action(body, pattern)[0] or ""
  return normalize_action(action, case_insensitive=False) or None


def parse_judgment(text: str, letters: tuple[str, ...] = LETTERS,
                   answer_pattern: str = ANSWER_PATTERN, *, final_line_only: bool = True,
                   conflicting: str = "malformed", reasoning_start: str = REASONING_START,
                   reasoning_end: str = REASONING_END) -> tuple[str | None, str]:
  """(letter or None, outcome) for one critic completion, strictly.

  final_line_only: the answer must be on the last non-empty line, as the prompt asks.
  conflicting: "malformed" rejects a completion that answers two different letters
    (`Answer: A` ... `Answer: B`); "last" keeps the last answer.
  """
  body = strip_reasoning(text, reasoning_start, reasoning_end)
  if body is None:
    return None, UNFINISHED
  matches = list(re.finditer(answer_pattern, body))
  if not matches:
    return None, MISSING
  last = matches[-1]
  line, _, after = body[last.end():].partition("\n")
  if final_line_only and after.strip():
    return None, NOT_FINAL
  upper = [l.upper() for l in letters]
  letter = last.group(1).upper()
  if letter not in upper:
    return None, INVALID
  others = [re.escape(l) for l in letters if l.upper() != letter]
  # "Answer: A or B", "Answer: A/B": the final line names another choice too.
  if others and re.search(r"\b(?:" + "|".join(others) + r")\b", line):
    return None, AMBIGUOUS
  said = {m.group(1).upper() for m in matches} & set(upper)
  if conflicting == "malformed" and len(said) > 1:
    return None, AMBIGUOUS
  return letters[upper.index(letter)], OK
