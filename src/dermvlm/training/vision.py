"""Vision stage: train the VLM's own vision tower and projector on labeled images, before the language stages.

The pooled visual tokens (what the projector hands the language model, averaged per image) feed two objectives,
each a switch: a temporary classification head (logit-adjusted, class-balanced or plain cross-entropy with label
smoothing), and a contrast against the language side's embeddings of the graph's multi-aspect class descriptions
(MAKE / DermLIP in spirit; with a frozen language model the descriptions act as knowledge-built class prototypes).
Images are augmented on the fly (``training/augment.py``), seeded per sample.

Training is transformers' ``Trainer`` over a small module that holds only the trained parts (vision tower,
projector, head), so checkpoints carry exactly those tensors and a resume after kill -9 loads them by name (and
refuses loudly if any is missing). The output is the standard HF folder (``model/``), loadable and servable as
before; the temporary head and the probe results sit beside it (``head/``, never inside the model folder).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from dermvlm.config import ConfigError, ModelSpec, VisionStage
from dermvlm.io import atomic_dir, atomic_write_text
from dermvlm.training.common import StageResult, last_checkpoint, plot_curves, trl_config
from dermvlm.training.placement import placed, to_device, to_host, trainer_device

log = logging.getLogger(__name__)

VISION_DEFAULTS: dict[str, Any] = {
    "per_device_train_batch_size": 64,
    "learning_rate": 1e-3,
    "weight_decay": 0.05,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 50,
    "max_grad_norm": 1.0,
    "num_train_epochs": 10,
    "save_steps": 100,
    "logging_steps": 10,
    "remove_unused_columns": False,
    "disable_tqdm": False,
}


def vision_config(stage: VisionStage, output_dir: Path, seed: int, where: str, report_to: str = "none"):
    """transformers ``TrainingArguments`` for the stage (its ``trl:`` mapping over the defaults)."""
    from transformers import TrainingArguments

    return trl_config(TrainingArguments, VISION_DEFAULTS, stage, output_dir, seed, where, report_to)


def _decode(row: dict) -> Any:
    import numpy as np
    import torch

    image = row["images"][0].convert("RGB")
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()


class LabeledImages:
    """The stage's training stream: ``total`` samples, epoch by epoch through seeded permutations, each sample
    augmented by a generator seeded with (seed, sample number). Deterministic, so resume skips exactly."""

    def __init__(self, dataset, class_index: dict[str, int], total: int, seed: int, augment_spec=None):
        self.dataset, self.class_index, self.total = dataset, class_index, total
        self.seed, self.spec = seed, augment_spec
        self.n = len(dataset)
        self._perm: tuple[int, list[int]] | None = None
        self._cache: dict[int, Any] = {}

    def __len__(self) -> int:
        return self.total

    def _order(self, epoch: int) -> list[int]:
        import torch

        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perm = (epoch, torch.randperm(self.n, generator=g).tolist())
        return self._perm[1]

    def image(self, i: int):
        if i not in self._cache:
            self._cache[i] = _decode(self.dataset[i])
        return self._cache[i]

    def __getitem__(self, k: int) -> dict[str, Any]:
        import torch

        from dermvlm.training.augment import augment

        i = self._order(k // self.n)[k % self.n]
        img = self.image(i)
        if self.spec is not None:
            g = torch.Generator().manual_seed(int(hashlib.sha256(f"{self.seed}:{k}".encode()).hexdigest()[:12], 16))
            img = augment(img, self.spec, g)
        return {"image": img, "label": self.class_index[self.dataset[i]["label"]]}


def image_inputs(processor, images: list) -> dict[str, Any]:
    """The processor's vision inputs for a batch of CHW uint8 tensors (pixel values and, per family, grids)."""
    out = processor.image_processor(images=images, return_tensors="pt")
    return {k: v for k, v in out.items() if k in ("pixel_values", "image_grid_thw", "pixel_attention_mask")}


def pooled_features(vlm, inputs: dict[str, Any]):
    """One vector per image: the projector's output tokens averaged (the visual tokens the language model reads),
    in float32 (the head and projections are float32 whatever the tower's dtype)."""
    import torch

    out = vlm.get_image_features(**inputs)
    feats = getattr(out, "pooler_output", out)
    if isinstance(feats, list | tuple):
        return torch.stack([f.reshape(-1, f.shape[-1]).mean(0) for f in feats]).float()
    return feats.reshape(feats.shape[0], -1, feats.shape[-1]).mean(1).float()


def _make_objective(vlm, family, stage: VisionStage, n_classes: int, prior, text_embeddings):
    import torch
    from torch import nn

    class VisionObjective(nn.Module):
        """The trained parts (vision tower, projector), the temporary head and, when contrast is on, its two
        projections. The rest of the VLM is reachable but not registered, so it is neither saved nor trained."""

        def __init__(self):
            super().__init__()
            object.__setattr__(self, "vlm", vlm)
            self.parts = nn.ModuleDict({p.replace(".", "__"): vlm.get_submodule(p) for p in family.vision_modules})
            dim = vlm.config.get_text_config().hidden_size
            self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, n_classes))
            self.register_buffer("log_prior", prior.clamp_min(1e-8).log(), persistent=False)
            self.register_buffer("class_weight", (1 / prior.clamp_min(1e-8)) / (1 / prior.clamp_min(1e-8)).mean(),
                                 persistent=False)
            if text_embeddings is not None:
                width = min(dim, 128)
                self.image_proj = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, width))
                self.text_proj = nn.Sequential(nn.LayerNorm(text_embeddings.shape[-1]),
                                               nn.Linear(text_embeddings.shape[-1], width))
                self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
                self.register_buffer("text_embeddings", text_embeddings, persistent=False)

        def gradient_checkpointing_enable(self, **kwargs):
            """``trl.gradient_checkpointing: true`` checkpoints the VLM's own blocks (the Trainer calls this)."""
            vlm.gradient_checkpointing_enable(**kwargs)

        def _ce(self, logits, labels):
            import torch.nn.functional as F

            if stage.loss == "logit_adjusted":
                return F.cross_entropy(logits + stage.logit_tau * self.log_prior, labels,
                                       label_smoothing=stage.label_smoothing)
            weight = self.class_weight if stage.loss == "balanced" else None
            return F.cross_entropy(logits, labels, weight=weight, label_smoothing=stage.label_smoothing)

        def contrast_logits(self, feats):
            import torch.nn.functional as F

            img = F.normalize(self.image_proj(feats), dim=-1)
            txt = F.normalize(self.text_proj(self.text_embeddings), dim=-1)  # [K, A, E]
            return self.logit_scale.exp().clamp(max=100) * torch.einsum("be,kae->bka", img, txt).mean(-1)

        def forward(self, labels=None, **inputs):
            feats = pooled_features(vlm, inputs)
            logits = self.head(feats)
            loss = logits.new_zeros(())
            if stage.supervised:
                loss = loss + self._ce(logits, labels)
            if stage.contrastive:
                loss = loss + stage.contrastive_weight * self._ce(self.contrast_logits(feats), labels)
            return {"loss": loss, "logits": logits}

    return VisionObjective()


def description_embeddings(vlm, family, processor, kg, classes: list[str], device):
    """``[K, A, D]``: the frozen language model's mean last hidden state over each class's aspect sentences
    (aspects a class lacks repeat its name sentence, so every class has ``A`` rows), computed on ``device`` (the
    trainer's) and returned on the host."""
    import torch

    from dermvlm.knowledge.descriptions import aspect_descriptions

    lm = vlm.get_submodule(family.language_module)
    texts = [list(aspect_descriptions(kg, c).values()) for c in classes]
    width = max(len(t) for t in texts)
    rows = []
    with torch.no_grad(), placed(lm, device):
        for sentences in texts:
            sentences = (sentences * width)[:width]
            embs = []
            for s in sentences:
                ids = processor.tokenizer(s, return_tensors="pt")["input_ids"].to(device)
                embs.append(to_host(lm(input_ids=ids).last_hidden_state[0].mean(0)))
            rows.append(torch.stack(embs))
    return torch.stack(rows)


def extract(objective, processor, dataset, device, batch_size: int = 256):
    """Pooled features and head logits (no augmentation) for every row of ``dataset``, computed on ``device`` (the
    trainer's, where the tower is) and returned as numpy arrays."""
    import torch

    feats, logits = [], []
    objective.eval()
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            rows = dataset.select(range(start, min(len(dataset), start + batch_size)))
            inputs = to_device(image_inputs(processor, [_decode(r) for r in rows]), device)
            f = pooled_features(objective.vlm, inputs)
            feats.append(to_host(f))
            logits.append(to_host(objective.head(f)))
    objective.train()
    return torch.cat(feats).numpy(), torch.cat(logits).numpy()


def _metrics(y, pred) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    return {"accuracy": round(float(accuracy_score(y, pred)), 4),
            "balanced_accuracy": round(float(balanced_accuracy_score(y, pred)), 4),
            "macro_f1": round(float(f1_score(y, pred, average="macro", zero_division=0)), 4), "n": len(y)}


def probe_report(objective, processor, splits: dict[str, Any], class_index: dict[str, int], seed: int, device
                 ) -> dict[str, Any]:
    """A logistic-regression probe fitted on the train features (class-balanced), scored on val and test; beside
    it, the temporary head's own predictions. Nothing is selected on either split."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = {}
    for split, ds in splits.items():
        feats, logits = extract(objective, processor, ds, device)
        y = np.array([class_index.get(lab, -1) for lab in ds["label"]])
        keep = y >= 0
        data[split] = (feats[keep], logits[keep], y[keep])
    x_train, _, y_train = data["train"]
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced",
                                                                random_state=seed))
    probe.fit(x_train, y_train)
    report: dict[str, Any] = {"probe": "logistic regression, class-balanced, on standardised pooled features"}
    for split, (x, logits, y) in data.items():
        report[split] = {"probe": _metrics(y, probe.predict(x)), "head": _metrics(y, logits.argmax(-1))}
    return report


def _trainer_class():
    from torch.utils.data import SequentialSampler
    from transformers import Trainer

    class VisionTrainer(Trainer):
        """``Trainer`` that keeps the stream's own order (shuffling and augmentation are the stream's, seeded)."""

        def _get_train_sampler(self, train_dataset=None):
            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

    return VisionTrainer


def _load_checkpoint_strict(objective, checkpoint: str) -> None:
    """Load a checkpoint's tensors into ``objective``; refuse when any trained tensor is missing or unexpected."""
    from safetensors.torch import load_file

    path = Path(checkpoint) / "model.safetensors"
    if not path.is_file():
        raise ConfigError(f"{checkpoint}: checkpoint has no model.safetensors; delete it to start the stage over")
    state = load_file(str(path))
    missing, unexpected = objective.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(f"{checkpoint}: checkpoint does not match the stage's model ({len(missing)} tensors "
                          f"missing, {len(unexpected)} unexpected, e.g. {(missing or unexpected)[0]}); delete the "
                          f"stage folder or use --fresh")


def run_vision(stage: VisionStage, model_spec: ModelSpec, model_path: str | Path, splits: dict[str, Any],
               output_dir: str | Path, seed: int = 0, where: str = "stages[?]", report_to: str = "none",
               callbacks: list | None = None) -> StageResult:
    """Train the vision tower + projector on ``splits['train']`` (an ``image_label`` dataset); probe on val/test."""
    import torch
    from transformers import set_seed

    from dermvlm.knowledge import load_graph
    from dermvlm.models.families import family_for
    from dermvlm.models.loading import load_model
    from dermvlm.models.parts import part_counts

    output_dir = Path(output_dir)
    args = vision_config(stage, output_dir, seed, f"{where}.trl", report_to)
    train = splits["train"]
    classes = sorted(set(train["label"]))
    if len(classes) < 2:
        raise ConfigError(f"{where}: the vision stage needs at least two classes in the train split "
                          f"(found {len(classes)})")
    class_index = {c: i for i, c in enumerate(classes)}
    counts = torch.tensor([train["label"].count(c) for c in classes], dtype=torch.float32)
    prior = counts / counts.sum()
    batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    steps = args.max_steps if args.max_steps and args.max_steps > 0 else \
        max(1, math.ceil(args.num_train_epochs * len(train) / batch))
    args.max_steps = steps
    set_seed(seed)
    started = time.perf_counter()
    spec = model_spec.model_copy(update={"quantization": model_spec.quantization.model_copy(
        update={"load_in_4bit": False})})
    vlm, processor = load_model(spec, model_path)
    family = family_for(vlm)
    parts = {"full": ["vision", "projector"], "frozen": ["projector"], "lora": ["projector"]}[stage.tower]
    if stage.tower == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        lora = model_spec.lora
        inject_adapter_in_model(LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                           target_modules=family.vision_lora_targets), vlm)
    for name, p in vlm.named_parameters():
        p.requires_grad_(family.part_of(name) in parts or "lora_" in name)
    text = description_embeddings(vlm, family, processor, load_graph(), classes, trainer_device(args)) \
        if stage.contrastive else None
    objective = _make_objective(vlm, family, stage, len(classes), prior, text)
    trained = {k: v for k, v in part_counts(vlm, family, trainable_only=True).items() if v}
    log.info("vision stage %s: %d classes, %d images, %d steps x %d, training %s", stage.name, len(classes),
             len(train), steps, batch, ", ".join(f"{k} {v:,}" for k, v in trained.items()))
    stream = LabeledImages(train, class_index, steps * batch, seed, stage.augment)

    def collate(samples: list[dict]) -> dict[str, Any]:
        inputs = image_inputs(processor, [s["image"] for s in samples])
        return {**inputs, "labels": torch.tensor([s["label"] for s in samples])}

    trainer = _trainer_class()(model=objective, args=args, train_dataset=stream, data_collator=collate,
                               callbacks=callbacks)
    from dermvlm.training.progress import show_progress

    show_progress(trainer, output_dir, f"{stage.name} ({stage.kind})")
    checkpoint = last_checkpoint(output_dir)
    if checkpoint:
        _load_checkpoint_strict(objective, checkpoint)
        log.info("vision stage %s: resuming from %s", stage.name, checkpoint)
    trainer.train(resume_from_checkpoint=checkpoint)
    history = list(trainer.state.log_history)
    report = probe_report(objective, processor, splits, class_index, seed, trainer_device(trainer)) \
        if stage.probe else {}
    if trainer.is_world_process_zero():
        _save(vlm, processor, objective, stage, classes, prior, report, output_dir)
        atomic_write_text(output_dir / "log_history.json", json.dumps(history, indent=1) + "\n")
        plot_curves(history, output_dir / "curves.png", title=f"{stage.name} (vision)")
    trainer.accelerator.wait_for_everyone()
    return StageResult(model_dir=output_dir / "model", adapter_dir=None, log_history=history,
                       seconds=time.perf_counter() - started,
                       extra={"probe": report, "classes": classes, "trained_parameters": trained})


def _save(vlm, processor, objective, stage: VisionStage, classes: list[str], prior, report: dict,
          output_dir: Path) -> None:
    """The VLM (LoRA merged) as a standard HF folder; the temporary head and its results beside it."""
    from safetensors.torch import save_file

    if stage.tower == "lora":
        from peft.tuners.lora import LoraLayer

        for name, module in list(vlm.named_modules()):
            if isinstance(module, LoraLayer):
                module.merge()
                parent, _, attr = name.rpartition(".")
                setattr(vlm.get_submodule(parent), attr, module.get_base_layer())
    with atomic_dir(output_dir / "model") as tmp:
        vlm.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    head_state = {k: v.detach().contiguous() for k, v in objective.state_dict().items()
                  if not k.startswith("parts.")}
    with atomic_dir(output_dir / "head") as tmp:
        save_file(head_state, str(tmp / "head.safetensors"))
        info = {"classes": classes, "prior": [round(float(p), 6) for p in prior], "loss": stage.loss,
                "logit_tau": stage.logit_tau, "contrastive": stage.contrastive, "results": report}
        (tmp / "head.json").write_text(json.dumps(info, indent=2) + "\n")
