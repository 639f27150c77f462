"""The Hugging Face Hub: model cards with evaluation results and ``dermvlm model push``."""
