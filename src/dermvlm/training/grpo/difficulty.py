"""Per-prompt difficulty from the policy itself: 1 - p(gold answer | image, question), teacher-forced.

The curriculum (``sampler.py``) sweeps each class's prompts easy → hard by this number, so it orders *images*
(which the policy already reads correctly, which not) instead of classes.
"""

from __future__ import annotations


def gold_answer(row: dict) -> str:
    """The answer a perfect policy would give: the option letter (MCQ) or the diagnosis name, in the answer tag."""
    gold = row["answer"] if row.get("options") else row.get("label_name") or row["answer"]
    return f"<answer>{gold}</answer>"


def policy_difficulty(model, processor, dataset, indices: list[int], device) -> dict[int, float]:
    """``{index: 1 - p(gold)}`` for the rows at ``indices`` (one teacher-forced forward pass each, inputs on
    ``device``: the trainer's, where it placed the model)."""
    import torch

    from dermvlm.training.placement import to_device, to_host

    out: dict[int, float] = {}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in indices:
            row = dataset[i]
            prompt = processor.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
            full = prompt + gold_answer(row)
            inputs = to_device(processor(text=[full], images=row["images"], return_tensors="pt"), device)
            n_prompt = processor(text=[prompt], images=row["images"], return_tensors="pt")["input_ids"].shape[1]
            logits = to_host(model(**inputs).logits[0, n_prompt - 1:-1])
            target = inputs["input_ids"][0, n_prompt:].cpu()
            logp = torch.log_softmax(logits, -1).gather(1, target[:, None]).sum()
            out[i] = round(1.0 - float(logp.exp()), 6)
    model.train(was_training)
    return out
