"""The control critic datasets (act_shuffled, act_blind) and their place in the pipeline."""
import collections

import numpy as np
import pytest

from act_jax import pipeline
from act_jax.data import controls, prompts


class WordTokenizer:
  """One id per whitespace word: enough to check that prompts were re-encoded."""
  chat_template = None

  def __call__(self, texts, add_special_tokens=False):
    return {"input_ids": [[len(w) for w in t.split()] for t in texts]}


def pairs(episodes=6, per_episode=5):
  out = []
  for e in range(episodes):
    for s in range(per_episode):
      a, b = f"take key{e}{s}", f"open door{e}{s}"
      out.append({"state_id": f"coin/{e}/{s}", "state": f"you are in room {e} step {s}",
                  "action_a": a, "action_b": b, "label": "AB"[(e + s) % 2],
                  "prompt": "old", "prompt_ids": np.zeros(3, np.int32)})
  return out


def test_shuffled_labels_are_random_and_keep_everything_else():
  recs = pairs(episodes=40)
  out = controls.shuffled_labels(recs, 0, ("A", "B"))
  assert [{k: v for k, v in r.items() if k != "label"} for r in out] == [
      {k: v for k, v in r.items() if k != "label"} for r in recs]
  agree = np.mean([r["label"] == o["label"] for r, o in zip(recs, out)])
  assert 0.35 < agree < 0.65  # independent of the true label (200 pairs)
  assert out == controls.shuffled_labels(recs, 0, ("A", "B"))  # seeded
  assert out != controls.shuffled_labels(recs, 1, ("A", "B"))


def test_blind_states_come_from_other_episodes_and_prompts_are_reencoded():
  recs = pairs()
  cfg = prompts.PromptConfig(use_chat_template=False)
  out = controls.blind_states(recs, 0, WordTokenizer(), cfg)
  by_id = {r["state_id"]: r for r in recs}
  donors = collections.Counter()
  for r, o in zip(recs, out):
    donor = by_id[o["state_donor"]]
    assert controls.episode_of(donor) != controls.episode_of(r)
    assert o["state"] == donor["state"] and o["state"] in o["prompt"]
    assert r["state"] not in o["prompt"]
    assert (o["label"], o["action_a"], o["action_b"]) == (r["label"], r["action_a"],
                                                          r["action_b"])
    assert o["prompt_ids"].tolist() == [len(w) for w in o["prompt"].split()]
    donors[o["state_donor"]] += 1
  assert len(donors) > len(recs) // 2  # a permutation, not one state for all
  with pytest.raises(ValueError, match="one episode"):
    controls.blind_states(pairs(episodes=1), 0, WordTokenizer(), cfg)


def test_control_variants_run_the_act_section_under_their_own_fingerprint():
  from tests.config_files import load
  c = load("embedded")
  c.pipeline.variants = "il,il_w_act,act_shuffled,act_blind"
  assert pipeline.variants(c) == ["il", "il_w_act", "act_shuffled", "act_blind"]
  assert pipeline.CHAINS["act_blind"] == ("act_blind", "il")
  act = pipeline.stage_config(c, "act", 0)
  assert pipeline.stage_config(c, "act_shuffled", 0).to_dict() == act.to_dict()
  prints = [pipeline.stage_fingerprint(c, s, 0) for s in ("act", "act_shuffled", "act_blind")]
  assert prints[0] != prints[1] != prints[2] != prints[0]
  assert prints[1]["stages"] == prints[0]["stages"] and prints[1]["reward"] == prints[0]["reward"]


def test_replay_only_control_is_the_critic_stage_without_judgment_reward():
  """il_w_replay / rl_w_replay: the act section's data, steps and replay, every judgment
  reward 0 (so its loss and gradient are 0 and only the replay term trains); refused
  where the act stage has no replay to keep."""
  from tests.config_files import load
  c = load("embedded")
  assert pipeline.CHAINS["il_w_replay"] == ("act_replay", "il")
  assert pipeline.CHAINS["rl_w_replay"] == ("act_replay", "rl")
  assert pipeline.CHAINS["rl_w_act_shuffled"] == ("act_shuffled", "rl")
  assert pipeline.CHAINS["rl_w_act_blind"] == ("act_blind", "rl")
  act, ctrl = (pipeline.stage_config(c, s, 0) for s in ("act", "act_replay"))
  assert ctrl.train.to_dict() == act.train.to_dict() and ctrl.train.replay_batch_size > 0
  assert ctrl.grpo.to_dict() == act.grpo.to_dict()
  assert (ctrl.reward.correct, ctrl.reward.wrong, ctrl.reward.malformed) == (0.0, 0.0, 0.0)
  assert act.reward.correct == 1.0
  assert pipeline.stage_fingerprint(c, "act_replay", 0) != pipeline.stage_fingerprint(c, "act", 0)
  c.stages.act.replay_batch_size = 0
  with pytest.raises(ValueError, match=r"config\.stages\.act\.replay_batch_size: the "
                                       r"replay-only control"):
    pipeline.stage_config(c, "act_replay", 0)
