"""CTC forced alignment: the most likely frame path that spells a given label sequence (Viterbi).

torchaudio's `forced_align` does this, but torchaudio is not a dependency of asrperf; this is the
textbook recursion (Graves et al. 2006, with max instead of sum) over the extended sequence
blank, y1, blank, y2, ..., yL, blank, vectorised over states with numpy. It gives the reference
word times the streaming scenario measures word emission delay against (CTC models).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def ctc_forced_align(log_probs: np.ndarray, targets: Sequence[int], blank: int) -> list[tuple[int, int]]:
    """For each target label, the first and last frame the best CTC path spends on it.

    `log_probs` is (frames, vocab) log-softmax output. The path may stay on a state, step to the
    next one, or skip a blank between two different labels (never between equal ones: "ll" needs
    a blank between its letters). Raises ValueError when the frames cannot hold the targets.
    """
    lp = np.asarray(log_probs, dtype=np.float64)
    n_frames = lp.shape[0]
    labels = list(targets)
    if not labels:
        return []
    repeats = sum(a == b for a, b in zip(labels, labels[1:]))
    if n_frames < len(labels) + repeats:
        raise ValueError(f"CTC alignment: {n_frames} frames cannot hold {len(labels)} labels "
                         f"({repeats} repeated, each needing a blank between)")
    ext = np.full(2 * len(labels) + 1, blank, dtype=np.int64)
    ext[1::2] = labels
    n_states = len(ext)
    # a skip into state s (from s - 2) is allowed when s is a label different from the one two back
    can_skip = np.zeros(n_states, dtype=bool)
    can_skip[3::2] = ext[3::2] != ext[1:-2:2]
    neg = -np.inf
    score = np.full(n_states, neg)
    score[0], score[1] = lp[0, ext[0]], lp[0, ext[1]]
    back = np.zeros((n_frames, n_states), dtype=np.int8)  # 0: stayed, 1: from s - 1, 2: from s - 2
    for t in range(1, n_frames):
        stay = score
        step = np.concatenate(([neg], score[:-1]))
        skip = np.where(can_skip, np.concatenate(([neg, neg], score[:-2])), neg)
        moves = np.stack([stay, step, skip])
        choice = moves.argmax(axis=0)
        back[t] = choice
        score = moves[choice, np.arange(n_states)] + lp[t, ext]
    state = n_states - 1 if score[-1] >= score[-2] else n_states - 2
    if not np.isfinite(score[state]):
        raise ValueError("CTC alignment: no path spells the targets within the frames")
    path = np.empty(n_frames, dtype=np.int64)
    for t in range(n_frames - 1, -1, -1):
        path[t] = state
        state -= int(back[t, state])
    spans: list[tuple[int, int]] = []
    for k in range(len(labels)):
        frames = np.flatnonzero(path == 2 * k + 1)
        spans.append((int(frames[0]), int(frames[-1])))
    return spans
