"""Every prompt template of the project; `act_jax.parsing` reads what models answer.

The paper does not publish its templates, so all of them are strings in one
`PromptConfig` that experiments can override. Templates use `str.format` fields;
write a literal brace as `{{` or `}}`.

A state is rendered as: head (instruction + task, always kept) + an "omitted"
marker when old turns were truncated + history turns + the current observation.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from act_jax import parsing


@dataclasses.dataclass
class PromptConfig:
  """Templates for states, the critic (ACT) prompt and the action (IL/RL) prompt."""
  # State rendering.
  instruction_block: str = "{instruction}\n\n"
  # The task verbatim: environments' task text already reads "Your task is to ...",
  # and the importer keeps that phrase.
  task_block: str = "{task}\n\n"
  omitted_block: str = "[{n} earlier steps omitted]\n"
  history_turn: str = "Observation: {observation}\nAction: {action}\n"
  current_turn: str = "Observation: {observation}"
  # Action prompt: imitation (stage 3 IL) and step-level RL (stage 3 RL).
  action_user: str = (
      "{state}\n\nWhat is your next action? Reply with one line of the form "
      "\"Action: <action>\".")
  action_target: str = "Action: {action}"
  action_pattern: str = parsing.ACTION_PATTERN
  # Critic prompt (stage 2 ACT).
  critic_user: str = (
      "{state}\n\nWhich action is better for the task?\n"
      "Action {letter_a}: {action_a}\nAction {letter_b}: {action_b}\n\n"
      "Think it through, then give your final answer on the last line as "
      "\"{answer_a}\" or \"{answer_b}\".")
  letters: tuple[str, str] = parsing.LETTERS
  answer_format: str = "Answer: {letter}"
  answer_pattern: str = parsing.ANSWER_PATTERN
  # Early Experience baselines (`act_jax.data.early_experience`). Implicit world
  # modelling: the state and an action taken -> the observation it led to (the target).
  world_model_user: str = "{state}\nAction: {action}\nWhat happens next?"
  # Self-reflection from scratch: this text, then the action target, is the SR target.
  # It must not contain the action marker: the policy reads the action after the last one.
  reflection: str = (
      "Taking '{alternative}' leads to: {alternative_observation}\n"
      "Taking '{expert}' leads to: {expert_observation}\n"
      "So the better action is '{expert}'.")
  # Self-reflection of a pretrained model: θ0 writes the reflection from this prompt.
  reflection_user: str = (
      "{state}\n\nTaking '{expert}' led to: {expert_observation}\n"
      "Taking '{alternative}' led to: {alternative_observation}\n\n"
      "In a few sentences, explain why '{expert}' is the better action here.")
  # Wrapping into a model prompt.
  system: str = ""
  use_chat_template: bool | None = None  # None: use it when the tokenizer has one.
  # Extra apply_chat_template arguments, e.g. Qwen3's {"enable_thinking": False}
  # for action prompts (IL targets carry no reasoning) but not for the critic.
  chat_template_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
  action_chat_template_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
  critic_chat_template_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
  plain_system: str = "{system}\n\n"
  plain_prompt: str = "{user}\n"
  eos_token: str | None = None  # None: the tokenizer's eos_token.

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "PromptConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
      raise ValueError(f"unknown PromptConfig fields: {sorted(unknown)}")
    d = dict(d)
    if "letters" in d:
      d["letters"] = tuple(d["letters"])
    return cls(**d)


# --- States -----------------------------------------------------------------


def state_head(instruction: str, task: str, cfg: PromptConfig) -> str:
  """The part of a state that truncation never removes."""
  head = cfg.instruction_block.format(instruction=instruction) if instruction else ""
  return head + cfg.task_block.format(task=task)


def history_turn(observation: str, action: str, thought: str | None,
                 cfg: PromptConfig) -> str:
  return cfg.history_turn.format(observation=observation, action=action,
                                 thought=thought or "")


def current_turn(observation: str, cfg: PromptConfig) -> str:
  return cfg.current_turn.format(observation=observation)


def omitted_marker(n: int, cfg: PromptConfig) -> str:
  return cfg.omitted_block.format(n=n) if n > 0 else ""


def render_state(head: str, turns: Sequence[str], omitted: int, current: str,
                 cfg: PromptConfig) -> str:
  return head + omitted_marker(omitted, cfg) + "".join(turns) + current


# --- Model prompts -----------------------------------------------------------


def chat_prompt(tokenizer: Any, user: str, cfg: PromptConfig,
                template_kwargs: dict[str, Any] | None = None) -> str:
  """Wraps a user message for generation: the chat template if any, else plain."""
  use_template = cfg.use_chat_template
  if use_template is None:
    use_template = bool(getattr(tokenizer, "chat_template", None))
  if use_template:
    messages = [{"role": "system", "content": cfg.system}] if cfg.system else []
    messages.append({"role": "user", "content": user})
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True,
        **{**cfg.chat_template_kwargs, **(template_kwargs or {})})
  system = cfg.plain_system.format(system=cfg.system) if cfg.system else ""
  return system + cfg.plain_prompt.format(user=user)


def action_prompt(tokenizer: Any, state: str, cfg: PromptConfig) -> str:
  """Prompt asking for the next action: imitation, RL, and policy sampling."""
  return chat_prompt(tokenizer, cfg.action_user.format(state=state), cfg,
                     cfg.action_chat_template_kwargs)


# Stage-3 RL generates from exactly the imitation prompt.
imitation_prompt = action_prompt
rl_action_prompt = action_prompt


def critic_prompt(tokenizer: Any, state: str, action_a: str, action_b: str,
                  cfg: PromptConfig) -> str:
  """Prompt asking which of two candidate actions is better (ACT stage 2)."""
  letter_a, letter_b = cfg.letters
  user = cfg.critic_user.format(state=state, action_a=action_a,
                                action_b=action_b, letter_a=letter_a,
                                letter_b=letter_b,
                                answer_a=answer_text(letter_a, cfg),
                                answer_b=answer_text(letter_b, cfg))
  return chat_prompt(tokenizer, user, cfg, cfg.critic_chat_template_kwargs)


def world_model_prompt(tokenizer: Any, state: str, action: str, cfg: PromptConfig) -> str:
  """Prompt asking what an action leads to (Early Experience's implicit world modelling)."""
  return chat_prompt(tokenizer, cfg.world_model_user.format(state=state, action=action), cfg,
                     cfg.action_chat_template_kwargs)


def reflection_prompt(tokenizer: Any, state: str, expert: str, expert_observation: str,
                      alternative: str, alternative_observation: str,
                      cfg: PromptConfig) -> str:
  """Prompt asking θ0 why the expert's action beats an alternative, given both outcomes."""
  user = cfg.reflection_user.format(
      state=state, expert=expert, expert_observation=expert_observation,
      alternative=alternative, alternative_observation=alternative_observation)
  return chat_prompt(tokenizer, user, cfg, cfg.action_chat_template_kwargs)


def action_target(action: str, cfg: PromptConfig) -> str:
  """Supervised target text for an action; the caller appends EOS as a token."""
  return cfg.action_target.format(action=action)


def answer_text(letter: str, cfg: PromptConfig) -> str:
  """The answer line a correct critic completion ends with."""
  return cfg.answer_format.format(letter=letter)
