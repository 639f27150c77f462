"""A QLoRA stage's merged model is the model that was trained: the adapter goes into its 4-bit base, dequantized
(``models/merge.py``), not into the unquantized weights it never saw; ``model merge --base-weights full`` still can."""

from __future__ import annotations

import json
import shutil

import torch
from PIL import Image
from typer.testing import CliRunner

from dermvlm.cli import app
from dermvlm.config import ModelSpec, make_stage
from dermvlm.models.loading import load_model
from dermvlm.recipes.text import OPEN_QUESTIONS
from dermvlm.training.common import recipe_dataset
from dermvlm.training.sft import run_sft


def logits(model, processor, image: Image.Image) -> torch.Tensor:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": OPEN_QUESTIONS[0]}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    with torch.no_grad():
        return model.eval()(**inputs).logits[0].float()


def test_a_qlora_stage_merges_into_the_base_it_was_trained_on(tmp_path, nano_dir, recipe_data):
    from peft import PeftModel

    ds = recipe_dataset(recipe_data, ["open_diagnosis"]).select(range(8))
    spec = ModelSpec(name_or_path=str(nano_dir), dtype="float32", lora={"r": 8, "alpha": 16, "dropout": 0.0},
                     quantization={"load_in_4bit": True, "on_cpu": "use", "compute_dtype": "float32"})
    result = run_sft(make_stage(name="sft", use_lora=True, trl={"max_steps": 4, "learning_rate": 5e-3}),
                     spec, nano_dir, ds, tmp_path / "sft")
    record = json.loads((result.adapter_dir / "dermvlm_base.json").read_text())
    assert record["quantization_config"]["bnb_4bit_quant_type"] == "nf4" and record["dtype"] == "float32"
    assert result.extra["merge"]["base_weights"] == "as-trained"  # what the run's manifest keeps for the stage
    assert "4-bit NF4 base" in result.extra["merge"]["merged_into"]
    assert "quantization_config" not in json.loads((result.model_dir / "config.json").read_text())

    runner = CliRunner()
    full = tmp_path / "full"
    r = runner.invoke(app, ["model", "merge", str(result.adapter_dir), "--out", str(full), "--base-weights", "full"])
    assert r.exit_code == 0, r.output
    assert "--base-weights full: the full-precision base" in r.output
    r = runner.invoke(app, ["model", "merge", str(result.adapter_dir), "--out", str(tmp_path / "bf16"),
                            "--dtype", "bfloat16"])
    assert "(--base-weights as-trained: the 4-bit NF4 base (double quantization) it was trained on, dequantized)" \
        in r.output, r.output
    config = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert "quantization_config" not in config  # vLLM serves it unquantized
    assert {config["dtype"], config["text_config"]["dtype"], config["vision_config"]["dtype"]} == {"bfloat16"}
    old = tmp_path / "old-adapter"  # an adapter saved before the record existed
    shutil.copytree(result.adapter_dir, old)
    (old / "dermvlm_base.json").unlink()
    r = runner.invoke(app, ["model", "merge", str(old), "--out", str(tmp_path / "old-merged")])
    assert r.exit_code == 0, r.output
    notes = [line for line in r.output.splitlines() if "note: " in line]  # after a progress bar's \r
    assert len(notes) == 1 and "no dermvlm_base.json" in notes[0], r.output
    assert "--base-weights as-trained: the full-precision base" in r.output

    image = Image.fromarray(torch.randint(0, 256, (56, 56, 3), generator=torch.Generator().manual_seed(0))
                            .to(torch.uint8).numpy())
    base4, processor = load_model(spec, nano_dir)
    assert getattr(base4, "is_loaded_in_4bit", False)
    trained = logits(PeftModel.from_pretrained(base4, str(result.adapter_dir)), processor, image)
    plain = ModelSpec(name_or_path=str(nano_dir), dtype="float32")
    merged_model, merged_processor = load_model(plain, result.model_dir)
    merged = logits(merged_model, merged_processor, image)
    base = dict(load_model(plain, nano_dir)[0].named_parameters())
    kept = {n: p for n, p in merged_model.named_parameters() if "norm" in n or "embed_tokens" in n}
    assert kept and all(torch.equal(p, base[n]) for n, p in kept.items())  # bitsandbytes left these unquantized
    into_full = logits(*load_model(plain, full), image)
    old_merge = logits(*load_model(plain, tmp_path / "old-merged"), image)
    scale = trained.abs().max()
    as_trained_error = float((merged - trained).abs().max() / scale)
    full_error = float((into_full - trained).abs().max() / scale)
    assert as_trained_error < 1e-5, as_trained_error
    assert full_error > 100 * max(as_trained_error, 1e-7), (full_error, as_trained_error)
    assert torch.equal(old_merge, into_full)
