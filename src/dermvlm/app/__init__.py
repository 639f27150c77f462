"""The chat app for people (Gradio) over any OpenAI-compatible endpoint: a client like evaluation (serving,
knowledge, and the evaluation's answer reader), never training."""
