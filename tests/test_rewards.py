"""Rewards: the judgment parser's outcomes and the action reward's tiers."""
import numpy as np
import pytest

from act_jax import rewards


@pytest.mark.parametrize("text, letter, outcome", [
    ("The first action opens the drawer.\nAnswer: A", "A", rewards.OK),
    ("reasoning\n\n**Answer:** B\n", "B", rewards.OK),
    ("Answer: (a)", "A", rewards.OK),
    ("<think>A looks right, but B does the task.</think>\nAnswer: B", "B", rewards.OK),
    ("Both look fine to me.", None, rewards.MISSING),
    ("<think>Answer: A is tempting, but", None, rewards.UNFINISHED),
    ("Answer: A\nbecause it is closer.", None, rewards.NOT_FINAL),
    ("Answer: C", None, rewards.INVALID),
    ("Answer: A or B", None, rewards.AMBIGUOUS),
    ("Answer: A/B", None, rewards.AMBIGUOUS),
    ("First I thought Answer: A.\nAnswer: B", None, rewards.AMBIGUOUS),
])
def test_parse_judgment(text, letter, outcome):
  assert rewards.parse_judgment(text, rewards.JudgmentConfig()) == (letter, outcome)


def test_conflicting_answers_can_keep_the_last():
  cfg = rewards.JudgmentConfig(conflicting="last")
  assert rewards.parse_judgment("Answer: A?\nNo.\nAnswer: B", cfg) == ("B", rewards.OK)


def test_judgment_reward_correct_wrong_malformed():
  texts = ["...\nAnswer: A", "...\nAnswer: B", "no answer", "Answer: A or B"]
  meta = {"label": ["A", "A", "B", "B"]}
  s = rewards.make("judgment")(texts, meta)
  np.testing.assert_array_equal(s.reward, [1.0, 0.0, 0.0, 0.0])
  np.testing.assert_array_equal(s.correct, [True, False, False, False])
  np.testing.assert_array_equal(s.malformed, [False, False, True, True])
  s = rewards.make("judgment", malformed=-0.5, wrong=-0.1)(texts, meta)
  np.testing.assert_allclose(s.reward, [1.0, -0.1, -0.5, -0.5])
  assert rewards.summarize(s) == pytest.approx(
      {"reward": -0.025, "accuracy": 0.25, "format_error_rate": 0.5})


def test_judgment_custom_letters():
  fn = rewards.make("judgment", letters=["1", "2"], answer_pattern=r"(?i)\baction\s+(\d)\b")
  s = fn(["I pick action 2", "action 1"], {"label": ["2", "2"]})
  np.testing.assert_array_equal(s.reward, [1.0, 0.0])


def test_action_reward_tiers():
  texts = ["Thought: the key is there.\nAction: Take Key From Drawer 1.",
           "Action: go to desk 1", "Action: dance", "I would look around.",
           "<think>Action: take key from drawer 1"]
  meta = {"expert_action": ["take key from drawer 1"] * 5,
          "admissible": [["go to desk 1", "take key from drawer 1"]] * 5}
  s = rewards.make("action")(texts, meta)
  np.testing.assert_allclose(s.reward, [1.0, 0.1, 0.0, -0.5, -0.5])
  np.testing.assert_array_equal(s.correct, [True, False, False, False, False])
  np.testing.assert_array_equal(s.malformed, [False, False, False, True, True])
  # Records without admissible actions: any non-expert action is "other".
  s = rewards.make("action", other=-0.2)(texts[:2], {"expert_action": ["x", "x"]})
  np.testing.assert_allclose(s.reward, [-0.2, -0.2])


def test_action_on_next_line():
  assert rewards.parse_action("Action:\n  Open Fridge 1 ", rewards.ActionConfig()) == (
      "open fridge 1")


def test_make_rejects_unknown_names():
  with pytest.raises(ValueError, match="unknown reward"):
    rewards.make("nope")
  with pytest.raises(ValueError, match="unknown field"):
    rewards.make("judgment", expert=1.0)
