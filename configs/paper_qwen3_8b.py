"""The paper's setup: Qwen3-8B, ACT then IL / RL, on a TPU v5p slice.

The model directory (a Hugging Face Qwen3-8B dir, local or gs://) and the expert
trajectories (the public ScienceWorld / ALFWorld agent-SFT sets in the conversation
format, converted once by act_jax.data.importers) come from the command line:
    python -m act_jax.data.importers sciworld_sft.json --out gs://BUCKET/data/sciworld.jsonl
    python -m act_jax.main --config configs/paper_qwen3_8b.py --workdir gs://BUCKET/act/qwen3_8b \
        --config.pipeline.model_dir=gs://BUCKET/models/Qwen3-8B \
        --config.pipeline.trajectories=gs://BUCKET/data/sciworld.jsonl
Training trajectories of an evaluation split's episodes are dropped (importers.drop_heldout).
docs/tpu_pod.md walks through the whole run on a TPU pod.
Values marked [V] are stated by the paper; [I] are our inference (the paper does not
publish them) — treat them as starting points.
"""
import ml_collections

from act_jax import config_lib


def get_config():
  c = config_lib.base()
  c.pipeline = ml_collections.ConfigDict(dict(
      variants="prompt,il,rl,act,il_w_act,rl_w_act", seeds=3, first_seed=0,  # [I]
      # Both required: --config.pipeline.model_dir=DIR (Qwen3-8B [V]) and
      # --config.pipeline.trajectories=FILE (a public conversation-format set).
      model_dir=ml_collections.config_dict.placeholder(str),
      trajectories=ml_collections.config_dict.placeholder(str), export=True))
  c.env = ml_collections.ConfigDict(dict(
      name="scienceworld", games=[], train_per_game=10, heldout_per_game=3, max_steps=50,
      pool_size=16,
      # The imported observations carry no look/inventory text; live ones must not either.
      env_kwargs=dict(observe_look_inventory=False)))
  c.tokenizer = ml_collections.ConfigDict(dict(vocab_size=0))
  c.data = ml_collections.ConfigDict(dict(alternatives="policy", k=4,  # K [I]
                                          max_state_tokens=4096))  # [I]
  c.prompts = ml_collections.ConfigDict(dict(
      use_chat_template=True,
      # Qwen3 thinking for the critic [I]; plain answers for actions [I].
      action_chat_template_kwargs={"enable_thinking": False}))
  # The run takes its architecture from model_dir's config.json; without a checkpoint
  # (`python -m act_jax.aot` on any host) the published Qwen3-8B shape stands in.
  c.model_preset = "qwen3-8b"
  # Every model choice compiled both ways in docs/tpu_aot.md is named here, so the command
  # line can override it (--config.model.attention=splash).
  c.model.update(dict(param_dtype="float32", dtype="bfloat16", remat=True, scan_layers=True,
                      attention="xla", logits_chunk=0))
  c.mesh_preset = "tpu_v5p_64"
  # 1 correct / 0 wrong [V: "rewarded only for selecting correctly"]
  c.reward = config_lib.judgment_reward()
  c.action_reward = config_lib.action_reward()  # [S]
  c.stages = ml_collections.ConfigDict(dict(
      base=dict(steps=0, batch_size=32, lr=0.0, rollouts_per_game=0),
      # ~10k pairs [S], 1 epoch [I]. GRPO: G=8, beta=1e-3, eps 0.2/0.28, T=1.0 [I].
      act=dict(steps=320, batch_size=32, lr=1e-6, warmup_steps=10,
               grpo=config_lib.grpo()),
      il=dict(steps=640, batch_size=32, lr=1e-5, warmup_steps=20),  # [I]
      rl=dict(steps=320, batch_size=32, lr=1e-6, warmup_steps=10,  # [I]
              grpo=config_lib.grpo())))
  c.eval = ml_collections.ConfigDict(dict(modes=("generate",), episodes_per_game=20,
                                          heldout_states=10000, critic_pairs=1000))
  return c
