"""Random-weight architectures for the transformers engine: filling the weights, the stand-in
tokenizers that detokenize inside the timed call, and the blank policy of random transducers.

torch and tokenizers are imported inside functions: importing this module costs nothing.
"""

from __future__ import annotations

import itertools
import json
import math
import tempfile
from pathlib import Path
from typing import Any

RANDOM_INIT_STD = 0.02  # the std of transformers' own initialisers for these models
# The published wav2vec2-base-960h / large-960h / HuBERT-large-ft character vocabulary.
CTC_VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", *"ETAONIHSRDLUMWCFGYPBVK'XJQZ"]


def random_fill(model: Any, seed: int = 0) -> None:
    """Materialise a meta-device model with random weights, ~10x faster than the initialisers.

    Values come from one seeded normal block (std 0.02) tiled over every tensor; norm layers get
    weight 1 / bias 0 so activations stay finite. The numbers are meaningless, the cost is real.
    """
    import torch

    model.to_empty(device="cpu")
    # to_empty gives every parameter its own storage: re-tie what the checkpoint ties (Whisper's LM
    # head is its token embedding), or a random model holds up to 152 MiB more than the real one
    model.tie_weights()
    gen = torch.Generator().manual_seed(seed)
    block = torch.randn(1 << 20, generator=gen) * RANDOM_INIT_STD
    with torch.no_grad():
        for module in model.modules():
            # conformer convolution modules use BatchNorm: unit running variance, as at init
            norm = isinstance(module, (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.modules.batchnorm._BatchNorm))
            for pname, p in module.named_parameters(recurse=False):
                if norm:
                    p.fill_(1.0 if pname == "weight" else 0.0)
                    continue
                flat = p.view(-1)
                reps = math.ceil(flat.numel() / block.numel())
                flat.copy_(block.repeat(reps)[: flat.numel()].to(p.dtype))
            for bname, b in module.named_buffers(recurse=False):
                if bname == "running_var":
                    b.fill_(1.0)
                else:
                    b.zero_()


# A random joint network would emit non-blank tokens at random, up to max_symbols_per_step (10)
# per encoder frame: ten times the steps of real speech. Random transducers are made to emit blank
# at every frame instead (TDT: blank with a duration of one frame), so greedy decoding takes
# exactly one decoder step per encoder frame (12.5 per audio second at 8x subsampling). That is a
# lower bound on real decoding: each step runs the joint network, but transformers skips the LSTM
# prediction network on blank, which real speech runs once per emitted token (~3-4 per second).
BLANK_LOGIT_BIAS = 30.0


def all_blank(model: Any) -> None:
    """Bias a random transducer's joint output to blank (and, for TDT, a duration of 1)."""
    import torch

    config = model.config
    # the prediction network starts from blank, as NeMo's ("blank as pad"); a config built from
    # scratch names no start token
    if model.generation_config.decoder_start_token_id is None:
        model.generation_config.decoder_start_token_id = config.blank_token_id
    with torch.no_grad():
        bias = model.joint.head.bias
        bias[config.blank_token_id] += BLANK_LOGIT_BIAS
        durations = list(getattr(config, "durations", ()))
        if durations:
            bias[config.vocab_size + durations.index(1)] += BLANK_LOGIT_BIAS


def piece_vocab(size: int, blank: int) -> list[str]:
    """A stand-in subword vocabulary of `size` entries with the CTC blank ("<pad>") at `blank`.

    Random weights have no real tokenizer; what matters is that ids decode to text inside the
    timed call at the real vocabulary size. Pieces are two- and three-letter strings, about the
    length of SentencePiece pieces; "|" is the word delimiter, as in the character vocabulary.
    """
    letters = "abcdefghijklmnopqrstuvwxyz"
    pairs = (a + b for a in letters for b in letters)
    triples = (a + b + c for a in letters for b in letters for c in letters)
    pieces = list(itertools.islice(itertools.chain(["<unk>", "|"], pairs, triples), size - 1))
    return [*pieces[:blank], "<pad>", *pieces[blank:]]


def piece_tokenizer(tf: Any, vocab: list[str]) -> Any:
    """A fast word-level tokenizer over `vocab`, decoding ids to pieces (no CTC collapse): the
    detokenizer of a random transducer, whose loop emits each token once. (Wav2Vec2CTCTokenizer
    takes ~50 s to build over 8,193 multi-letter pieces.)"""
    from tokenizers import Tokenizer, models

    backend = Tokenizer(models.WordLevel({piece: i for i, piece in enumerate(vocab)}, unk_token="<unk>"))
    return tf.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>")


def ctc_tokenizer(tf: Any, vocab: list[str]) -> Any:
    """A CTC tokenizer over `vocab`: batch_decode collapses repeats and drops blanks, as CTC needs."""
    vocab_dir = Path(tempfile.mkdtemp(prefix="asrperf-ctc-vocab-"))
    (vocab_dir / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate(vocab)}))
    return tf.Wav2Vec2CTCTokenizer(str(vocab_dir / "vocab.json"))
