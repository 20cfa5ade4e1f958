"""How familiar the target text is to the source model, measured on a sample of it.

Signals, by source family:

- Hugging Face text models: sub-tokens per word and the unknown-token rate of the
  model's tokenizer (a tokenizer trained on other text splits the words of a new
  domain into many pieces); and, when the checkpoint has a trained language-model
  head, the model's perplexity on the text: masked-LM pseudo-perplexity for encoders
  (Salazar et al., 2020: mask each token in turn), plain perplexity for decoders.
- word vectors: the share of the text's words (tokens and distinct words) that have a vector;
- ELMo: character-based, so every word has a representation; no signal is measured.

Each signal votes ``familiar`` or ``unfamiliar`` against the thresholds below; these
are rules of thumb (English text a model was trained on splits into about 1.1-1.3
sub-tokens per word; biomedical or code text into 1.5-2.5).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from nlptransfer.backbones import is_word_vector_source
from nlptransfer.backbones.word_vectors import load_vectors, tokenize_words

logger = logging.getLogger(__name__)

# (familiar at or below, unfamiliar above); between the two a signal does not vote.
THRESHOLDS: dict[str, tuple[float, float]] = {
    "subtokens_per_word": (1.4, 1.7),
    "unknown_token_pct": (0.5, 2.0),
    "pseudo_perplexity": (30.0, 100.0),
    "perplexity": (80.0, 300.0),
}
# (familiar at or above, unfamiliar below), in percent of the text's word tokens.
COVERAGE_THRESHOLDS = (95.0, 85.0)
# Longer texts add cost, not information: pseudo-perplexity runs one forward pass per token.
PPL_MAX_TOKENS = 64


@dataclass
class Familiarity:
    source_kind: str
    sample_size: int = 0
    signals: dict[str, float] = field(default_factory=dict)
    votes: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        """unfamiliar when any signal says so; familiar when some signal says so; else unknown."""
        if "unfamiliar" in self.votes.values():
            return "unfamiliar"
        return "familiar" if "familiar" in self.votes.values() else "unknown"

    def add(self, name: str, value: float) -> None:
        self.signals[name] = round(float(value), 4)
        if name == "vector_token_coverage_pct":
            good, bad = COVERAGE_THRESHOLDS
            vote = "familiar" if value >= good else "unfamiliar" if value < bad else None
        elif name in THRESHOLDS:
            good, bad = THRESHOLDS[name]
            vote = "familiar" if value <= good else "unfamiliar" if value > bad else None
        else:
            vote = None
        if vote:
            self.votes[name] = vote

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict}


def measure_familiarity(
    model_name: str, texts: list[str], trust_remote_code: bool = False, lowercase: bool = True,
    allow_pickle: bool = False, modality: str = "text", language_model: bool = True,
) -> Familiarity:  # fmt: skip
    """The familiarity signals of ``texts`` (a sample of the target data) for ``model_name``;
    ``language_model=False`` skips the (pseudo-)perplexity pass, the one costly signal."""
    if modality != "text":
        result = Familiarity("image")
        result.notes.append("Domain familiarity is measured for text only.")
        return result
    if is_word_vector_source(model_name):
        return _vector_familiarity(model_name, texts, lowercase, allow_pickle)
    if model_name.startswith("elmo:"):
        result = Familiarity("characters", len(texts))
        result.notes.append("ELMo reads characters: every word has a representation; nothing to measure.")
        return result
    return _hf_familiarity(model_name, texts, trust_remote_code, language_model)


def _vector_familiarity(
    model_name: str, texts: list[str], lowercase: bool, allow_pickle: bool
) -> Familiarity:
    vectors = load_vectors(model_name, allow_pickle=allow_pickle)
    known = vectors.index()
    words = [w for text in texts for w in tokenize_words(text, lowercase)]
    result = Familiarity("word-vectors", len(texts))
    if not words:
        result.notes.append("The sample has no words.")
        return result
    result.add("vector_token_coverage_pct", 100.0 * sum(w in known for w in words) / len(words))
    distinct = set(words)
    result.add("vector_type_coverage_pct", 100.0 * sum(w in known for w in distinct) / len(distinct))
    if vectors.subword is not None:
        result.notes.append("fastText .bin vectors build a vector for any word from its character n-grams.")
    return result


def _hf_familiarity(
    model_name: str, texts: list[str], trust_remote_code: bool, language_model: bool = True
) -> Familiarity:
    from nlptransfer.backbones.hf_base import load_hf_config

    source = load_hf_config(model_name, trust_remote_code)
    result = Familiarity("subword", len(texts))
    if not language_model:
        _fragmentation(_tokenizer(source), texts, result)
        return result
    lm, tokenizer, objective = _language_model(source, result)
    _fragmentation(tokenizer, texts, result)
    if lm is not None:
        with torch.inference_mode():
            if objective == "mlm":
                result.add("pseudo_perplexity", pseudo_perplexity(lm, tokenizer, texts))
            else:
                result.add("perplexity", perplexity(lm, tokenizer, texts))
    return result


def _fragmentation(tokenizer: Any, texts: list[str], result: Familiarity) -> None:
    words = sum(len(tokenize_words(t, lowercase=False)) for t in texts)
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    pieces = sum(len(row) for row in ids)
    if not words or not pieces:
        result.notes.append("The sample has no words.")
        return
    result.add("subtokens_per_word", pieces / words)
    unk = tokenizer.unk_token_id
    if unk is not None:
        result.add("unknown_token_pct", 100.0 * sum(row.count(unk) for row in ids) / pieces)


def _tokenizer(source: Any) -> Any:
    import transformers

    return transformers.AutoTokenizer.from_pretrained(source.path, **source.kwargs)


def _language_model(source: Any, result: Familiarity) -> tuple[torch.nn.Module | None, Any, str]:
    """The model with its LM head when the checkpoint holds a trained one, its tokenizer, the objective."""
    import transformers

    from nlptransfer.runs.pretrain import default_objective

    objective = default_objective(source.config)
    tokenizer = _tokenizer(source)
    auto = {"mlm": transformers.AutoModelForMaskedLM, "clm": transformers.AutoModelForCausalLM}.get(objective)
    if auto is None or type(source.config) not in auto._model_mapping:
        result.notes.append(f"No {objective} language-model head in transformers for this architecture; "
                            "perplexity not measured.")  # fmt: skip
        return None, tokenizer, objective
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the missing-head report is ours to give, below
    try:
        lm, info = auto.from_pretrained(
            source.path, config=source.config, dtype=torch.float32, output_loading_info=True, **source.kwargs
        )
    except (OSError, ValueError) as err:
        result.notes.append(f"Could not load the language-model head ({err}); perplexity not measured.")
        return None, tokenizer, objective
    finally:
        transformers.logging.set_verbosity(verbosity)
    if info.get("missing_keys"):
        # A checkpoint saved without its LM head (e.g. sentence-transformers models) gets a random one:
        # its perplexity would measure that random head, not the text.
        result.notes.append(
            "The checkpoint has no trained language-model head (missing: "
            f"{', '.join(sorted(info['missing_keys'])[:3])}...); perplexity not measured."
        )
        return None, tokenizer, objective
    return lm.eval(), tokenizer, objective


def pseudo_perplexity(
    model: torch.nn.Module, tokenizer: Any, texts: list[str], max_tokens: int = PPL_MAX_TOKENS
) -> float:
    """exp(mean NLL of each token when it alone is masked), over every token of ``texts``."""
    special = set(tokenizer.all_special_ids)
    total, count = 0.0, 0
    for text in texts:
        ids = torch.tensor(tokenizer(text, truncation=True, max_length=max_tokens)["input_ids"])
        positions = [i for i, t in enumerate(ids.tolist()) if t not in special]
        if not positions:
            continue
        batch = ids.repeat(len(positions), 1)
        rows = torch.arange(len(positions))
        batch[rows, positions] = tokenizer.mask_token_id
        logits = model(input_ids=batch, attention_mask=torch.ones_like(batch)).logits[rows, positions]
        total += float(torch.nn.functional.cross_entropy(logits, ids[positions], reduction="sum"))
        count += len(positions)
    return math.exp(total / count) if count else float("nan")


def perplexity(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: list[str],
    max_tokens: int = PPL_MAX_TOKENS,
    batch_size: int = 16,
) -> float:
    """exp(mean next-token NLL) over ``texts``, each scored on its own."""
    total, count = 0.0, 0
    for start in range(0, len(texts), batch_size):
        rows = [
            tokenizer(t, truncation=True, max_length=max_tokens)["input_ids"]
            for t in texts[start : start + batch_size]
        ]
        rows = [r for r in rows if len(r) > 1]
        if not rows:
            continue
        width = max(map(len, rows))
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        total += float(
            torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), targets, ignore_index=-100, reduction="sum"
            )
        )
        count += int((targets != -100).sum())
    return math.exp(total / count) if count else float("nan")


def sample_texts(texts: list[str], size: int, seed: int) -> list[str]:
    rows = np.random.default_rng(seed).permutation(len(texts))[:size]
    return [texts[i] for i in sorted(rows)]
