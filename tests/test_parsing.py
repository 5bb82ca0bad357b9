"""Parsers: one per answer format, and every consumer compares actions through it."""
import pytest

from act_jax import evaluation, parsing, policy, rewards
from act_jax.data import alternatives as alt_lib, importers, prompts
from act_jax.data.report import DropLog
from act_jax.data.trajectory import Step, Trajectory
from act_jax.envs import rollout


@pytest.mark.parametrize("action, expected", [
    ("  Take   apple ", "take apple"),
    ("Take apple.", "take apple"),
    ("\"take apple\".", "take apple"),
    ("'take apple.'", "take apple"),
    ("**Go to desk 1**", "go to desk 1"),
    ("`open fridge 1`", "open fridge 1"),
    ("look around...", "look around"),
    ("look at bob's book", "look at bob's book"),
    ("move 1.5 to a", "move 1.5 to a"),
    ("**.**", ""),
])
def test_normalize_action(action, expected):
  assert parsing.normalize_action(action) == expected
  assert parsing.normalize_action(expected) == expected  # idempotent


def test_normalize_action_can_keep_case():
  assert parsing.normalize_action(" **Go to  Desk 1.** ", case_insensitive=False) == "Go to Desk 1"


@pytest.mark.parametrize("text, letter, outcome", [
    ("The first action opens the drawer.\nAnswer: A", "A", parsing.OK),
    ("reasoning\n\n**Answer:** B\n", "B", parsing.OK),
    ("Answer: (a)", "A", parsing.OK),
    ("Answer: b\n\n  \n", "B", parsing.OK),
    ("Answer: A. It opens the drawer.", "A", parsing.OK),
    ("<think>A looks right, but B does the task.</think>\nAnswer: B", "B", parsing.OK),
    ("<think>Answer: A</think>\nAnswer: B", "B", parsing.OK),  # inside reasoning: not said
    ("Both look fine to me.", None, parsing.MISSING),
    ("Answer: Apple", None, parsing.MISSING),
    ("<think>Answer: A is tempting, but", None, parsing.UNFINISHED),
    ("Answer: A\nbecause it is closer.", None, parsing.NOT_FINAL),
    ("Answer: C", None, parsing.INVALID),
    ("Answer: A or B", None, parsing.AMBIGUOUS),
    ("Answer: A/B", None, parsing.AMBIGUOUS),
    ("Answer: A, not B", None, parsing.AMBIGUOUS),
    ("First I thought Answer: A.\nAnswer: B", None, parsing.AMBIGUOUS),
])
def test_parse_judgment(text, letter, outcome):
  assert parsing.parse_judgment(text) == (letter, outcome)


def test_parse_judgment_options():
  assert parsing.parse_judgment("Answer: A\nbecause.", final_line_only=False) == ("A", parsing.OK)
  assert parsing.parse_judgment("Answer: A?\nNo.\nAnswer: B", conflicting="last") == (
      "B", parsing.OK)
  assert parsing.parse_judgment("I pick action 2", ("1", "2"), r"(?i)\baction\s+(\d)\b") == (
      "2", parsing.OK)


@pytest.mark.parametrize("text, expected", [
    ("Thought: it is there.\nAction: **Take Apple.**", "Take Apple"),  # case kept
    ("Action:\n\n  go to desk 1 \n", "go to desk 1"),
    ("Action: a\nAction: b", "b"),
    ("<think>Action: a</think>\nAction: b", "b"),
    ("<think>Action: a", None),  # unfinished reasoning
    ("Action: **", None),
    ("I would look around.", None),
])
def test_parse_action(text, expected):
  assert parsing.parse_action(text) == expected


def test_split_action_returns_the_text_before_the_marker():
  assert parsing.split_action("Think.\nAction:\ngo west\n") == ("go west", "Think.\n")
  assert parsing.split_action("no marker") == (None, "no marker")


def test_one_parser_per_format_and_one_home_for_its_patterns():
  names = ("normalize_action", "strip_reasoning", "split_action", "parse_action",
           "parse_judgment", "parse_answer")
  for module in (rewards, prompts, alt_lib, importers, policy, evaluation, rollout):
    for name in names:
      assert getattr(module, name, None) in (None, getattr(parsing, name, None)), (module, name)
  assert not hasattr(prompts, "DEFAULT_ACTION_PATTERN")
  defaults = [prompts.PromptConfig().action_pattern, rewards.ActionConfig().action_pattern,
              importers.ConversationFormat().action_pattern]
  assert all(p is parsing.ACTION_PATTERN for p in defaults)
  assert prompts.PromptConfig().answer_pattern is parsing.ANSWER_PATTERN
  assert rewards.JudgmentConfig().answer_pattern is parsing.ANSWER_PATTERN


@pytest.mark.parametrize("written, gold, same", [
    ("Take apple.", "take apple", True),
    ("\"Take  Apple\"", "take apple", True),
    ("**take apple**", "take apple", True),
    ("take apples", "take apple", False),
])
def test_reward_evaluation_and_data_compare_actions_alike(written, gold, same):
  # The action reward: the expert's action?
  scores = rewards.make("action")([f"Action: {written}"], {"expert_action": [gold]})
  assert scores.correct.tolist() == [same]
  # Next-action accuracy on a held-out expert state.
  traj = Trajectory(task="t", steps=[Step(observation="o", action=gold,
                                          admissible=[gold, "look"])])
  acc = rollout.next_action_accuracy(lambda batch: [written] * len(batch), [traj])
  assert acc["accuracy"] == float(same)
  # Alternatives: a candidate equal to the expert action is left out (noted, not dropped).
  drops, notes = DropLog(), DropLog()
  kept = alt_lib.filter_candidates([written, "look"], gold, alt_lib.AlternativesConfig(),
                                   "s", drops, notes)
  assert kept == (["look"] if same else [written, "look"])
  assert notes.to_dict() == ({"candidate/equals_expert": 1} if same else {})
  assert drops.total == 0
