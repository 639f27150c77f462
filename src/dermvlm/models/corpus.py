"""The text corpus on which the nano model's tokenizer is trained.

A byte-level BPE covers any text, but it spends few tokens only on what it saw in training. The corpus
therefore holds what the data recipes and the assistant will write: disease, morphology, colour, site and
dermoscopy terms (``corpus_terms.txt``, derived from the shared knowledge sources), the DermIQ answer format,
multiple-choice questions, conversation phrases and everyday English. Deterministic for a given seed.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from importlib import resources

COMMON_CONDITIONS = (
    "tinea corporis", "tinea capitis", "tinea cruris", "tinea pedis", "scabies", "vitiligo", "acne vulgaris",
    "melasma", "pityriasis versicolor", "urticaria", "atopic dermatitis", "eczema", "psoriasis",
    "seborrheic dermatitis", "contact dermatitis", "lichen planus", "impetigo", "molluscum contagiosum",
    "herpes zoster", "pityriasis rosea", "alopecia areata", "actinic keratosis", "basal cell carcinoma",
    "squamous cell carcinoma", "melanoma", "melanocytic nevus", "seborrheic keratosis", "dermatofibroma",
    "vascular lesion", "benign keratosis-like lesion", "intraepidermal carcinoma", "bowen's disease",
)
MORPHOLOGY = (
    "macule", "patch", "papule", "plaque", "nodule", "vesicle", "bulla", "pustule", "wheal", "scale", "crust",
    "erosion", "ulcer", "atrophy", "lichenification", "fissure", "excoriation", "scar", "comedo", "cyst",
)
COLOURS = ("red", "pink", "brown", "dark brown", "black", "blue", "grey", "white", "yellow", "skin-coloured",
           "violaceous", "erythematous", "hyperpigmented", "hypopigmented", "depigmented")
SITES = ("face", "scalp", "neck", "trunk", "back", "chest", "abdomen", "arm", "forearm", "hand", "finger",
         "leg", "thigh", "foot", "nail", "lip", "ear", "nose", "genital area", "flexures", "palms", "soles")
WORDS = (  # noqa: SIM905 - a word list reads better as one string
    "the a an of in on with and or is are was were this that it lesion image shows there be may likely "
    "most consistent diagnosis differential includes features suggest favour against because typical border "
    "irregular regular well defined ill symmetric asymmetric shape size growth recent change itching pain "
    "bleeding patient years old history months weeks skin tone fitzpatrick type i ii iii iv v vi dermoscopy "
    "dermoscopic clinical photograph close up what which does look like answer question option options "
    "correct yes no not benign malignant premalignant refer referral dermatologist biopsy urgent soon routine "
    "advice please see a doctor treatment cream topical oral antifungal steroid moisturiser sun protection "
    "observation conclusion next steps this is a research tool and not a medical diagnosis image is not of skin"
).split()


def load_terms() -> list[str]:
    """The bundled dermatology term list (one term per line)."""
    text = resources.files("dermvlm.models").joinpath("corpus_terms.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _sentences(rng: random.Random, diseases: list[str]) -> Iterator[str]:
    d = rng.choice(diseases)
    others = rng.sample(diseases, 3)
    m, c, s = rng.choice(MORPHOLOGY), rng.choice(COLOURS), rng.choice(SITES)
    letters = "ABCDEF"[: rng.randint(2, 6)]
    options = [d, *others][: len(letters)]
    rng.shuffle(options)
    yield (
        f"<think>The image shows a {c} {m} on the {s}. The differential includes {others[0]} and {others[1]}. "
        f"The features favour {d}.</think><answer>{d}</answer>"
    )
    yield "Which diagnosis best fits this lesion? " + " ".join(
        f"{L}. {o}" for L, o in zip(letters, options, strict=False)
    ) + f" Answer: {rng.choice(letters)}"
    yield f"What is the most likely diagnosis? Is this {d}? {rng.choice(['Yes', 'No'])}. Is it malignant?"
    yield f"I have a {c} spot on my {s} for {rng.randint(1, 52)} weeks. It is itchy. What could it be?"
    yield (
        f"This could be {d}. Other possibilities are {others[0]} or {others[2]}. Please see a dermatologist; "
        "a biopsy may be needed. This is a research tool and not a medical diagnosis."
    )
    yield " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 16))) + "."


def corpus(n_rounds: int = 3000, seed: int = 0, extra_terms: Iterable[str] = ()) -> list[str]:
    """Lines of training text for the tokenizer; same seed and terms give the same lines."""
    rng = random.Random(seed)
    terms = load_terms() + list(extra_terms)
    diseases = sorted(set(terms) | set(COMMON_CONDITIONS))
    lines: list[str] = list(terms) + list(COMMON_CONDITIONS) + list(MORPHOLOGY) + list(COLOURS) + list(SITES)
    lines += [t.capitalize() for t in terms]
    for _ in range(n_rounds):
        lines.extend(_sentences(rng, diseases))
    return lines
