"""A real vLLM server (CPU build) on 127.0.0.1: chat with an image, greedy parity with transformers, LoRA by name."""

from __future__ import annotations

import openai
import pytest
import torch
from conftest import VLLM_API_KEY as API_KEY
from PIL import Image

from dermvlm.models.loading import load_model
from dermvlm.recipes.text import OPEN_QUESTIONS
from dermvlm.serving.client import ask_about_image
from dermvlm.serving.server import ServeOptions, ServerError, VLLMServer

pytestmark = pytest.mark.vllm
N_TOKENS = 16


@pytest.fixture(scope="module")
def server(vllm_server):
    return vllm_server


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=120)


def transformers_answer(model, processor, image) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": OPEN_QUESTIONS[0]}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=[Image.open(image).convert("RGB")], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=N_TOKENS, do_sample=False)
    return processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def served_answer(client, model: str, image) -> str:
    r = ask_about_image(client, model, image, OPEN_QUESTIONS[0], max_tokens=N_TOKENS, temperature=0.0)
    return r.choices[0].message.content


def test_chat_completion_with_image(server, client, isic_images):
    assert server.options.host == "127.0.0.1"
    assert sorted(server.models()) == ["base", "derm"]
    r = ask_about_image(client, "derm", isic_images[5], OPEN_QUESTIONS[0], max_tokens=N_TOKENS)
    assert r.usage.prompt_tokens > 16  # the image tokens reached the model
    assert r.choices[0].message.content.startswith("<think>")  # the trained DermIQ format


def test_float32_greedy_equals_transformers_on_3_images(trained_run, client, isic_images):
    model, processor = load_model(trained_run["spec"], trained_run["base"])
    for image in isic_images[:3]:
        assert served_answer(client, "base", image) == transformers_answer(model.eval(), processor, image)


def test_lora_by_name_equals_merged_model(trained_run, client, isic_images):
    model, processor = load_model(trained_run["spec"], trained_run["merged"])
    answers = []
    for image in isic_images[:3]:
        served = served_answer(client, "derm", image)
        assert served == transformers_answer(model.eval(), processor, image)
        answers.append(served)
    # The adapter is applied: the first token's log-probability differs between the two names.
    def first_logprob(name: str) -> float:
        r = ask_about_image(client, name, isic_images[0], OPEN_QUESTIONS[0], max_tokens=1, logprobs=True)
        return r.choices[0].logprobs.content[0].logprob

    assert abs(first_logprob("derm") - first_logprob("base")) > 1e-4


def test_api_key_is_required(server, isic_images):
    bad = openai.OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        ask_about_image(bad, "base", isic_images[0], "Diagnosis?", max_tokens=2)


def test_missing_model_or_adapter_fails_before_starting(tmp_path, trained_run):
    with pytest.raises(ServerError, match=r"no adapter_config\.json"):
        VLLMServer(ServeOptions(model=str(trained_run["base"]), loras={"x": str(tmp_path)})).start()
    with pytest.raises(ServerError, match="model folder not found"):
        VLLMServer(ServeOptions(model=str(tmp_path / "absent"))).start()
