"""Training stages: thin layers over TRL's trainers (SFT, GRPO++, DPO)."""
