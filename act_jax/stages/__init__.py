"""Training stages for the shared loop: GRPO (ACT critic, stage-3 RL)."""
