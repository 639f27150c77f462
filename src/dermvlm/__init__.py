"""dermvlm: labeled skin images → a dermatology vision-language assistant, trained with TRL, served with vLLM."""

__version__ = "0.1.0"
