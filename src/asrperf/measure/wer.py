"""Corpus-level WER and CER after Whisper's English text normalisation, with a bootstrap CI.

WER = total word edits / total reference words over the corpus (not a mean of per-utterance
rates, which over-weights short utterances). The CI resamples utterances with replacement.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from asrperf.measure.stats import bootstrap_ci


@lru_cache(maxsize=1)
def _english_normalizer():
    # transformers' port of OpenAI's EnglishTextNormalizer; the British->American spelling map it
    # needs is OpenAI's english.json, shipped (MIT) inside the whisper-normalizer package.
    from importlib.resources import files

    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    mapping = json.loads(files("whisper_normalizer").joinpath("normalizers/english.json").read_text())
    return EnglishTextNormalizer(mapping)


def normalize(text: str) -> str:
    """Whisper English normalisation: case, punctuation, numbers, spellings, fillers."""
    return _english_normalizer()(text)


@dataclass(frozen=True)
class ErrorRates:
    """Corpus-level error rates in [0, inf) (fractions, not percent) with 95% bootstrap CIs."""

    wer: float
    cer: float
    wer_ci: tuple[float, float]
    cer_ci: tuple[float, float]
    word_edits: int
    ref_words: int
    char_edits: int
    ref_chars: int
    n_utterances: int
    n_worse: int = 0  # filled by comparisons; 0 here


def _counts(ref: str, hyp: str) -> tuple[int, int, int, int]:
    import jiwer

    if not ref:
        # nothing to recognise: every hypothesis word is an insertion
        hyp_words = hyp.split()
        return len(hyp_words), 0, len(hyp), 0
    w = jiwer.process_words(ref, hyp)
    c = jiwer.process_characters(ref, hyp)
    word_edits = w.substitutions + w.deletions + w.insertions
    char_edits = c.substitutions + c.deletions + c.insertions
    return word_edits, len(ref.split()), char_edits, len(ref)


def count_table(references: Sequence[str], hypotheses: Sequence[str], normalise: bool = True) -> np.ndarray:
    """(n, 4) array per utterance: word edits, reference words, char edits, reference chars."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        raise ValueError("no utterances to score")
    if normalise:
        references = [normalize(r) for r in references]
        hypotheses = [normalize(h) for h in hypotheses]
    counts = np.array([_counts(r, h) for r, h in zip(references, hypotheses)], dtype=float)
    if counts[:, 1].sum() == 0:
        raise ValueError("the references hold no words after normalisation")
    return counts


def error_rates(references: Sequence[str], hypotheses: Sequence[str], normalise: bool = True) -> ErrorRates:
    """WER and CER over paired utterances; normalised with Whisper's English normaliser by default."""
    counts = count_table(references, hypotheses, normalise)
    we, rw, ce, rc = counts.sum(axis=0)

    def ratio(num: int, den: int):
        return lambda a: a[..., num].sum(axis=-1) / np.maximum(a[..., den].sum(axis=-1), 1)

    # bootstrap over utterance indices; each resample sums edits and reference lengths
    idx = np.arange(len(counts))
    wer_ci = bootstrap_ci(idx, lambda i: ratio(0, 1)(counts[i.astype(int)]))
    cer_ci = bootstrap_ci(idx, lambda i: ratio(2, 3)(counts[i.astype(int)]))
    return ErrorRates(
        wer=float(we / rw),
        cer=float(ce / rc),
        wer_ci=wer_ci,
        cer_ci=cer_ci,
        word_edits=int(we),
        ref_words=int(rw),
        char_edits=int(ce),
        ref_chars=int(rc),
        n_utterances=len(counts),
    )
