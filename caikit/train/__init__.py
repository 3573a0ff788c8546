"""caikit's trainers for local causal LMs: SFT, reward model, DPO, PPO (torch + transformers + accelerate)."""
