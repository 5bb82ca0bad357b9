"""Rewards: the judgment and action rewards' tiers (their parsers: test_parsing.py)."""
import numpy as np
import pytest

from act_jax import rewards


def test_conflicting_answers_can_keep_the_last():
  text, meta = ["Answer: A?\nNo.\nAnswer: B"], {"label": ["B"]}
  assert rewards.make("judgment")(text, meta).malformed.tolist() == [True]
  assert rewards.make("judgment", conflicting="last")(text, meta).correct.tolist() == [True]


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
  s = rewards.make("action")(["Action:\n  Open Fridge 1 "], {"expert_action": ["open fridge 1"]})
  assert s.correct.tolist() == [True]


def test_make_rejects_unknown_names():
  with pytest.raises(ValueError, match="unknown reward"):
    rewards.make("nope")
  with pytest.raises(ValueError, match="unknown field"):
    rewards.make("judgment", expert=1.0)
