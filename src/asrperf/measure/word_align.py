"""Which hypothesis word stands for which reference word: a Levenshtein alignment after Whisper's
English normaliser, word by word, so each reference word can be given a hypothesis word's time.

Each word is normalised on its own ("planks," -> "planks", "It's" -> "it is"): a word may become
several tokens or none, and every token remembers the word it came from. The tokens are aligned
with jiwer (the same edit distance WER counts); a reference token that is matched or substituted
is paired with its hypothesis token, a deleted one with nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from asrperf.measure.wer import normalize


def tokens(words: Sequence[str]) -> tuple[list[str], list[int]]:
    """Normalised tokens of `words` and, for each token, the index of the word it came from."""
    out: list[str] = []
    owners: list[int] = []
    for i, word in enumerate(words):
        for token in normalize(word).split():
            out.append(token)
            owners.append(i)
    return out, owners


def align_words(reference: Sequence[str], hypothesis: Sequence[str]) -> list[int | None]:
    """For each reference word, the index of the hypothesis word aligned to it (the one aligned to
    its last token), or None when every token of it was deleted (or it normalises to nothing)."""
    import jiwer

    ref_tokens, ref_owner = tokens(reference)
    hyp_tokens, hyp_owner = tokens(hypothesis)
    out: list[int | None] = [None] * len(reference)
    if not ref_tokens or not hyp_tokens:
        return out
    result = jiwer.process_words(" ".join(ref_tokens), " ".join(hyp_tokens))
    for chunk in result.alignments[0]:
        if chunk.type not in ("equal", "substitute"):
            continue
        for k in range(chunk.ref_end_idx - chunk.ref_start_idx):
            out[ref_owner[chunk.ref_start_idx + k]] = hyp_owner[chunk.hyp_start_idx + k]
    return out
