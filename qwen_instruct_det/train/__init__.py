"""Training: our run configs, SFT with TRL and PEFT, GRPO and its rewards."""
