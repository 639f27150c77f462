"""Every model family through the whole workflow, as a user runs it: one `dermvlm pipeline` per family on its tiny
build (full SFT, GRPO++ with LoRA, LoRA SFT, DPO on KG-ranked policy pairs, each LoRA stage merged), then the final
model served by vLLM and evaluated on a suite. One test per family x step, so the README's families table
(`scripts/families_table.py`) is these tests' results.

The families that take a pixel budget train at one other than their build's (``PIXELS``); while the final model is
served, a real-size photograph is counted by the HF processor and by the server, as it is and as the chat page sends
it, and every evaluation item's prompt tokens are checked against the training processor's count."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from dermvlm.models.families import FAMILIES, family_for

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.vllm]
NAMES = sorted(FAMILIES)
PIXELS = {"qwen2_5_vl": {"max": 224 * 224}, "qwen3_vl": {"max": 256 * 256}, "smolvlm": {"max": 192 * 192}}
QUESTION = "What is the most likely diagnosis of this skin lesion?"
SUITE = """\
name: family_check
sources: [{name: sample}]
split: test
split_fractions: {val: 0.15, test: 0.2}
types: [mcq]
image: {max_side: 224}
max_tokens: 48
limit: 6
bootstrap: 0
"""


def config(family: str, out: Path, suite: Path) -> dict:
    lora = {"use_lora": True}
    return {
        "name": f"fam-{family}", "seed": 0, "output_dir": str(out),
        "model": {"nano": {"family": family, "seed": 0}, "dtype": "float32",
                  "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
                  **({"pixels": PIXELS[family]} if family in PIXELS else {})},
        "data": {"recipe": str(ROOT / "data_recipes" / "sample.yaml")},
        "stages": [
            {"name": "pretrain", "kind": "sft", "use_lora": False, "data": ["reasoning_trace"],
             "trl": {"max_steps": 2, "learning_rate": 1e-3, "per_device_train_batch_size": 2}},
            {**lora, "name": "grpo", "kind": "grpo", "rewards": {"format": 0.2, "partial_credit": 1.0},
             "plus": {"clip_higher": 0.28, "token_level_loss": True, "zero_variance_filter": False},
             "trl": {"max_steps": 1, "num_generations": 2, "per_device_train_batch_size": 2,
                     "max_completion_length": 16, "learning_rate": 1e-4}},
            {**lora, "name": "sft", "kind": "sft", "data": ["conversation"],
             "trl": {"max_steps": 1, "per_device_train_batch_size": 2, "learning_rate": 1e-3}},
            {**lora, "name": "dpo", "kind": "dpo", "pairs_from": "policy", "policy_samples": 2, "min_margin": 0.0,
             "max_prompts": 2, "sample_max_new_tokens": 16,
             "trl": {"max_steps": 1, "per_device_train_batch_size": 2, "learning_rate": 5e-5}},
        ],
        "serve": {"dtype": "float32", "max_model_len": 1024},
        "evaluate": [str(suite)],
    }


def real_size_photo(tmp: Path) -> Path:
    """A 1024x768 dermoscopy photograph: one of ../shared/data/isic_cc0, else a bundled sample image enlarged to
    that size (the token count depends on the size only)."""
    from conftest import SHARED_DATA
    from PIL import Image

    from dermvlm.datasets.sample import load_sample_records

    for path in sorted((SHARED_DATA / "isic_cc0" / "images").glob("*.jpg")):
        with Image.open(path) as im:
            if im.size == (1024, 768):
                return path
    out = tmp / "photo.jpg"
    with Image.open(load_sample_records(limit=1)[0].image) as im:
        im.convert("RGB").resize((1024, 768)).save(out, quality=95)
    return out


def hf_prompt_tokens(processor, messages: list[dict]) -> int:
    """The training processor's prompt length for OpenAI chat messages (``image_url`` parts as images)."""
    import base64
    import io

    from PIL import Image

    images, chat = [], []
    for m in messages:
        parts = m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
        content = []
        for part in parts:
            if part["type"] == "image_url":
                images.append(Image.open(io.BytesIO(base64.b64decode(part["image_url"]["url"].split(",", 1)[1]))))
                content.append({"type": "image"})
            else:
                content.append(part)
        chat.append({"role": m["role"], "content": content})
    text = processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    return len(processor(text=[text], images=images or None, return_tensors="np")["input_ids"][0])


def served_counts(server, model_dir: Path, photo: Path) -> dict:
    """HF processor vs vLLM prompt tokens for the photograph as it is, as the chat page sends it, and no image."""
    import base64

    import openai
    from PIL import Image

    from dermvlm.app.chat import image_url
    from dermvlm.models.loading import load_processor
    from dermvlm.models.pixels import image_side

    processor = load_processor(model_dir)  # the folder's processor: the run's budget, as training saved it
    client = openai.OpenAI(base_url=server.base_url, api_key="EMPTY", max_retries=0, timeout=120)
    urls = {"original": "data:image/jpeg;base64," + base64.b64encode(photo.read_bytes()).decode(),
            "sent": image_url(photo, image_side(model_dir))}
    out = {}
    for name, url in [*urls.items(), ("text", None)]:
        content = ([{"type": "image_url", "image_url": {"url": url}}] if url else []) + [{"type": "text",
                                                                                         "text": QUESTION}]
        messages = [{"role": "user", "content": content}]
        r = client.chat.completions.create(model=server.model_name, messages=messages, max_tokens=1, temperature=0)
        out[name] = {"hf": hf_prompt_tokens(processor, messages), "vllm": r.usage.prompt_tokens}
        if url:
            import io

            out[name]["size"] = list(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size)
    return out


@pytest.fixture(scope="module", params=NAMES)
def family_run(request, tmp_path_factory):
    """The pipeline's outcome for one family (kept even when it fails, so each step's test says which broke) and,
    counted while its final model is served for the evaluation, the tokens of a real-size photograph."""
    import yaml

    from dermvlm.config import RunConfig, load_config
    from dermvlm.pipeline import run_pipeline, serve_and_evaluate

    family = request.param
    tmp = tmp_path_factory.mktemp(f"fam-{family}")
    suite = tmp / "suite.yaml"
    suite.write_text(SUITE)
    cfg_file = tmp / "run.yaml"
    cfg_file.write_text(yaml.safe_dump(config(family, tmp / "runs", suite)))
    run = tmp / "runs" / f"fam-{family}"
    error, counts = None, None
    try:
        cfg = load_config(cfg_file, RunConfig)
        final = run_pipeline(cfg, source=str(cfg_file), evaluate=False)
        key = json.loads((run / "manifest.json").read_text())["final_model_key"]
        photo = real_size_photo(tmp)
        _, counts = serve_and_evaluate(cfg, final, key, str(cfg_file), during=lambda srv: served_counts(srv, final,
                                                                                                         photo))
    except Exception as err:  # each step's test reports its own part of a failure
        error = f"{type(err).__name__}: {err}"
    return family, run, error, counts


def _stage(run: Path, name: str) -> dict:
    done = run / name / "done.json"
    assert done.is_file(), f"stage {name} did not finish"
    return json.loads(done.read_text())


def _trained(family: str, run: Path, name: str, lora: bool) -> None:
    _stage(run, name)
    history = json.loads((run / name / "log_history.json").read_text())
    losses = [h.get("loss", h.get("train_loss")) for h in history if "loss" in h or "train_loss" in h]
    assert losses and all(math.isfinite(float(x)) for x in losses)
    assert family_for(run / name / "model").name == family  # the saved (merged) folder is still this family
    assert (run / name / "adapter" / "adapter_config.json").is_file() == lora


def test_sft_full(family_run):
    family, run, _, _ = family_run
    _trained(family, run, "pretrain", lora=False)


def test_grpo_plus_lora(family_run):
    family, run, _, _ = family_run
    _trained(family, run, "grpo", lora=True)


def test_sft_lora_and_merge(family_run):
    family, run, _, _ = family_run
    _trained(family, run, "sft", lora=True)


def test_dpo_policy_pairs(family_run):
    family, run, _, _ = family_run
    _trained(family, run, "dpo", lora=True)
    assert json.loads((run / "dpo" / "pairs_stats.json").read_text())["pairs"] >= 1


def test_served_and_evaluated(family_run):
    _, run, error, _ = family_run
    assert error is None, error
    metrics = json.loads((run / "eval" / "family_check" / "metrics.json").read_text())
    assert metrics["n_items"] == 6 and metrics["errors"] == 0  # vLLM answered every item
    assert metrics["metrics"]["types"]["mcq"]["n"] == 6


def test_hf_processor_and_vllm_count_the_same_tokens_at_the_run_budget(family_run):
    family, run, error, counts = family_run
    assert error is None, error
    budget = json.loads((run / "manifest.json").read_text())["pixels"]
    for case in ("original", "sent", "text"):
        assert counts[case]["hf"] == counts[case]["vllm"], (case, counts)
    image_tokens = counts["original"]["hf"] - counts["text"]["hf"]
    assert image_tokens == budget["reference_tokens"] > 0  # the manifest's tokens for a 1024x768 photograph
    assert counts["sent"]["hf"] == counts["original"]["hf"]  # the chat page's downscale keeps every token
    assert max(counts["sent"]["size"]) == budget["image_side"] < 1024  # sent at the run's side, not 1024 px
    if family in PIXELS:  # the config's budget, not the build's, reached the served folder
        assert budget["max_pixels"] == PIXELS[family]["max"]
        assert json.loads((run / "dpo" / "model" / "dermvlm_pixels.json").read_text())["max_pixels"] == \
            PIXELS[family]["max"]


def test_evaluation_sends_images_at_the_run_budget(family_run):
    import io

    from datasets import Image, List, load_from_disk
    from PIL import Image as PILImage

    from dermvlm.evaluation.runner import messages_for
    from dermvlm.models.loading import load_processor
    from dermvlm.recipes.text import SYSTEM_PROMPT

    _, run, error, _ = family_run
    assert error is None, error
    budget = json.loads((run / "manifest.json").read_text())["pixels"]
    out = run / "eval" / "family_check"
    items = load_from_disk(str(out / "items" / "eval_item"))["test"].cast_column("images", List(Image(decode=False)))
    by_image = {row["id"]: row["images"][0]["bytes"] for row in items}
    sides = [max(PILImage.open(io.BytesIO(b)).size) for b in by_image.values()]
    assert max(sides) == budget["image_side"]  # the sample's 384 px photographs, downscaled to the run's side only
    processor = load_processor(run / "dpo" / "model")
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    for p in predictions:  # what the server counted for each question is what training counts for it
        messages = messages_for({**p, "image": by_image[p["id"]]}, SYSTEM_PROMPT)
        assert p["prompt_tokens"] == hf_prompt_tokens(processor, messages), p["id"]
