"""The streaming scenario's parts on literal cases: LocalAgreement, the simulated clock against
hand-computed latencies, the metrics, chunked CTC seams, CTC forced alignment, the capacity
search (a stub engine of known capacity, on the wall clock), configuration and cell keys."""

import dataclasses

import numpy as np
import pytest

from asrperf.config import ModelConfig, RunConfig, StreamingConfig, config_from_dict
from asrperf.data.audio import Utterance
from asrperf.data.clips import ClipCache, build_exact, n_samples
from asrperf.engines.base import Engine, FrameLabels, StreamingUnsupported, Transcription, Word
from asrperf.engines.hf_whisper import words_from_tokens
from asrperf.errors import ConfigError, MissingExtraError
from asrperf.measure.ctc_align import ctc_forced_align
from asrperf.measure.streaming import StreamTrace, Update, chunk_samples, commit_times_s, stability, stream_metrics
from asrperf.measure.word_align import align_words
from asrperf.run.plan import Cell, expand
from asrperf.scenarios.stream_capacity import Probe, judge, search, threaded_probe
from asrperf.scenarios.stream_clock import run_stream
from asrperf.scenarios.stream_endpoint import Endpointer, SileroVad, VoiceActivity
from asrperf.scenarios.stream_policies import WINDOW_PAD_S, Chunked, LocalAgreement, make_policy

RATE = 16_000


def W(text: str, start: float = 0.0, end: float = 0.0) -> Word:
    return Word(text, start, end)


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class ScriptedWhisper(Engine):
    """Words at fixed times; a call returns the words fully heard in its buffer and costs `compute_s`."""

    name = "scripted"

    def __init__(self, words: list[Word], compute_s: float, clock: FakeClock | None = None, sleep: bool = False):
        super().__init__()
        self.words, self.compute_s, self.clock, self.sleep = words, compute_s, clock, sleep
        self.prompts: list[str] = []

    def load(self, spec, weights, dtype, device):
        pass

    def transcribe(self, audios, sample_rate):
        return Transcription([""] * len(audios), [0] * len(audios))

    def model_family(self) -> str:
        return "whisper"

    def transcribe_words(self, audio, sample_rate, prompt=""):
        self.prompts.append(prompt)
        if self.clock is not None:
            self.clock.t += self.compute_s
        if self.sleep:
            import time

            time.sleep(self.compute_s)
        heard = len(audio) / sample_rate
        return [w for w in self.words if w.end_s <= heard + 1e-9]


# -- LocalAgreement on literal hypotheses -----------------------------------------------------------

def _la(agreement: int = 2) -> LocalAgreement:
    return LocalAgreement(ScriptedWhisper([], 0.0), RATE, agreement=agreement)


def test_local_agreement_2_commits_exactly_the_agreed_prefixes():
    la = _la()
    steps = [("a b c", ""), ("a b d", "a b"), ("c e", ""), ("c e f", "c e"), ("f", "f"), ("g", "")]
    committed = []
    for hyp, expected in steps:
        agreed = la.agree([W(t) for t in hyp.split()])
        assert " ".join(w.text for w in agreed) == expected, hyp
        committed += agreed
    assert [w.text for w in la.committed] == [w.text for w in committed] == "a b c e f".split()
    assert [w.text for w in la.tails[-1]] == ["g"]  # shown, not committed


def test_local_agreement_3_needs_three_hypotheses_to_agree():
    la = _la(agreement=3)
    assert la.agree([W("a"), W("b")]) == []
    assert la.agree([W("a"), W("c")]) == []  # two agree on "a": not enough
    assert [w.text for w in la.agree([W("a"), W("c")])] == ["a"]  # "c" agrees with only one of them
    assert [w.text for w in la.agree([W("c"), W("d")])] == ["c"]


def test_insert_drops_words_before_the_commit_and_a_repeated_tail():
    la = _la()
    la.committed = [W("one", 0.0, 0.5), W("two", 0.5, 1.0)]
    # "one" ends before the last commit; "two" repeats the committed tail at the buffer start
    new = la.insert([W("one", 0.0, 0.5), W("two", 0.95, 1.2), W("three", 1.2, 1.6)])
    assert [w.text for w in new] == ["three"]


def test_buffer_is_trimmed_at_the_second_to_last_committed_sentence_and_prompts_with_what_scrolled_out():
    la = LocalAgreement(ScriptedWhisper([], 0.0), RATE, trim_s=4.0)
    la.committed = [W("Hello", 0.0, 0.4), W("world.", 0.4, 1.0), W("Good", 1.2, 1.5), W("day.", 1.5, 2.0),
                    W("Again", 2.2, 2.6)]
    la._trim_at_sentence()
    assert la.offset_s == 2.0  # "day." ends the second-to-last sentence ("Again" starts the last)
    assert la.prompt() == "Hello world. Good day."
    la.prompt_chars = 5
    assert la.prompt() == "day."


class WindowedWhisper(ScriptedWhisper):
    """A scripted engine that reads a shorter encoder window, and records the window each call asked for."""

    def __init__(self, words):
        super().__init__(words, 0.0)
        self.windows: list[float | None] = []

    def transcribe_words(self, audio, sample_rate, prompt="", window_s=None):
        self.windows.append(window_s)
        return super().transcribe_words(audio, sample_rate, prompt)


@pytest.mark.parametrize("window", ["full", "buffer"])
def test_encoder_window_buffer_asks_for_the_buffer_plus_the_pad_and_the_row_says_so(window):
    engine = WindowedWhisper([W("alpha", 0.2, 0.6), W("bravo", 0.7, 1.1)])
    policy = make_policy("local_agreement", engine, RATE, StreamingConfig(encoder_window=window))
    audio = np.zeros(3 * RATE, np.float32)
    for end in (RATE, 2 * RATE, 3 * RATE):
        policy.update(audio[:end], final=end == len(audio))
    s = policy.settings()
    assert s["encoder_window"] == window
    if window == "full":
        assert engine.windows == [None, None, None] and "encoder_window_pad_s" not in s
    else:  # the buffer never trimmed here: it grows 1, 2, 3 s, and each window is that plus the pad
        assert engine.windows == [pytest.approx(b + WINDOW_PAD_S) for b in (1.0, 2.0, 3.0)]
        assert s["encoder_window_pad_s"] == WINDOW_PAD_S
    assert [w.text for w in policy.committed] == ["alpha", "bravo"]


def test_an_unknown_encoder_window_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match=r"streaming.encoder_window: 'short' is not one of full, buffer"):
        StreamingConfig(encoder_window="short").validate()


def test_transformers_refuses_a_short_encoder_window_with_the_setting_to_change():
    from asrperf.engines.hf import TransformersEngine

    engine = object.__new__(TransformersEngine)  # the refusal comes before any model is needed
    with pytest.raises(StreamingUnsupported, match=r'reads only its full 30 s encoder window; use '
                                                   r'streaming.encoder_window = "full" \(or engine ct2\)'):
        engine.transcribe_words(np.zeros(RATE, np.float32), RATE, "", window_s=2.0)


# -- the endpoint (LocalAgreement + a voice activity detector) on literal speech -----------------------

class TimedWhisper(ScriptedWhisper):
    """ScriptedWhisper on audio whose samples hold their own index, so it knows where its buffer starts:
    a call returns the words wholly inside the buffer, in buffer times."""

    starts_s: list[float]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.starts_s = []

    def transcribe_words(self, audio, sample_rate, prompt=""):
        super().transcribe_words(audio[:0], sample_rate, prompt)
        t0 = float(audio[0]) / sample_rate
        t1 = t0 + len(audio) / sample_rate
        self.starts_s.append(t0)
        return [W(w.text, w.start_s - t0, w.end_s - t0) for w in self.words if w.start_s >= t0 - 1e-9 and w.end_s <= t1 + 1e-9]


class ScriptedVad(VoiceActivity):
    """Speech at fixed stream times (samples hold their index); a pause shorter than min_silence_s is speech."""

    name = "scripted"

    def __init__(self, spans_s: list[tuple[float, float]]) -> None:
        self.spans_s = spans_s
        self.read_s: list[tuple[float, float]] = []  # the audio of every look, stream times

    def speech_s(self, audio, sample_rate, min_silence_s):
        a = float(audio[0]) / sample_rate
        b = a + len(audio) / sample_rate
        self.read_s.append((a, b))
        out: list[tuple[float, float]] = []
        for s, e in self.spans_s:
            s, e = max(s, a), min(e, b)
            if s < e:
                if out and s - out[-1][1] < min_silence_s:
                    out[-1] = (out[-1][0], e)
                else:
                    out.append((s, e))
        if out and b - out[-1][1] < min_silence_s - 1e-9:  # not silent long enough yet: still speech
            out[-1] = (out[-1][0], b)
        return [(s - a, e - a) for s, e in out]


def _ramp(seconds: float) -> np.ndarray:
    return np.arange(int(seconds * RATE), dtype=np.float32)


def _stream_with_endpoint(words, spans, seconds, endpoint: bool):
    clock = FakeClock()
    engine = TimedWhisper(words, 0.3, clock)
    vad = ScriptedVad(spans)
    policy = LocalAgreement(engine, RATE, endpointer=Endpointer(vad, 0.1) if endpoint else None)
    trace = run_stream(policy, _ramp(seconds), RATE, 1.0, "simulated", "c", timer=clock, **UTTERANCES)
    return trace, policy, engine, vad


@pytest.mark.parametrize("endpoint, commits, decodes, finalization", [
    # speech ends at 1.3 and 2.9: the update at 2.0 sees 0.7 s of pause after "bravo" and commits it at once;
    # the one at 3.0 commits "charlie delta" (pause 0.1 s); the last one hears only silence and decodes nothing
    (True, [((), 1.3), (("alpha", "bravo"), 2.3), (("alpha", "bravo", "charlie", "delta"), 3.3)] + [
        (("alpha", "bravo", "charlie", "delta"), 4.0)], 3, [2.3 - 1.4, 3.3 - 3.0]),
    # pure LocalAgreement-2: every word waits for a second update that agrees
    (False, [((), 1.3), (("alpha",), 2.3), (("alpha", "bravo"), 3.3), (("alpha", "bravo", "charlie", "delta"), 4.3)],
     4, [3.3 - 1.4, 4.3 - 3.0]),
])
def test_an_endpoint_commits_at_the_end_of_speech_without_a_second_agreeing_update(endpoint, commits, decodes,
                                                                                   finalization):
    trace, policy, engine, _ = _stream_with_endpoint(WORDS, [(0.2, 1.3), (1.5, 2.9)], 4.0, endpoint)
    assert [(u.committed, u.done_s) for u in trace.updates] == [(c, pytest.approx(t)) for c, t in commits]
    assert len(engine.prompts) == decodes
    m, _ = stream_metrics(trace)
    assert m.finalization_s == pytest.approx(finalization)
    assert trace.final_words == ("alpha", "bravo", "charlie", "delta")
    s = policy.settings()
    if endpoint:
        assert (s["endpoint"], s["endpoint_silence_ms"], s["endpoints"], s["skipped_updates"]) == ("vad", 100, 2, 1)
        assert engine.starts_s == pytest.approx([0.0, 0.0, 1.3])  # the buffer restarted where speech ended
        assert engine.prompts[-1] == "alpha bravo"  # what the endpoint committed scrolled out into the prompt
        assert policy.offset_s == pytest.approx(4.0 - 0.6)  # silence: only what the detector reads again is kept
    else:
        assert s["endpoint"] == "none" and "endpoints" not in s


class HypothesesWhisper(ScriptedWhisper):
    """Returns its `hypotheses` one call after another (buffer times), as Whisper retimes a word when it hears more."""

    def __init__(self, hypotheses: list[list[Word]]) -> None:
        super().__init__([], 0.0)
        self.hypotheses = hypotheses

    def transcribe_words(self, audio, sample_rate, prompt=""):
        self.prompts.append(prompt)
        return self.hypotheses[len(self.prompts) - 1]


def test_a_word_agreed_as_speech_ends_does_not_hide_the_first_word_after_the_endpoint():
    # the detector hears speech stop at 1.17 s; Whisper times "sea" to end at 1.29 s in the update that agrees
    # on it and fires the endpoint, and the next sentence's "the" to start right at the cut (as on the
    # built-in corpus, where "The girl at the booth" came out as "at the booth")
    engine = HypothesesWhisper([
        [W("sea", 0.5, 0.97)],
        [W("sea", 0.5, 1.29), W("the", 1.35, 1.45), W("girl", 1.45, 1.8)],
        [W("the", 0.0, 0.28), W("girl", 0.28, 0.6), W("sold", 0.6, 1.0)],  # the buffer from 1.17 s
    ])
    policy = LocalAgreement(engine, RATE, endpointer=Endpointer(ScriptedVad([(0.2, 1.17), (1.4, 3.0)]), 0.1))
    audio = _ramp(3.0)
    policy.update(audio[:RATE], False)
    shown = policy.update(audio[: 2 * RATE], False)
    assert shown.committed == ("sea",) and policy.offset_s == pytest.approx(1.17)
    assert policy.committed[-1].end_s == pytest.approx(1.17)  # held to where speech stopped
    shown = policy.update(audio, True)
    assert shown.committed == ("sea", "the", "girl", "sold")


def test_silence_is_not_decoded_and_the_detector_reads_only_recent_audio():
    words = [W("hello", 3.3, 3.8), W("there", 3.9, 4.4)]
    clock = FakeClock()
    engine = TimedWhisper(words, 0.3, clock)
    vad = ScriptedVad([(3.2, 4.5)])
    policy = LocalAgreement(engine, RATE, endpointer=Endpointer(vad, 0.1))
    trace = run_stream(policy, _ramp(6.0), RATE, 1.0, "simulated", "c", timer=clock)
    # updates at 1, 2, 3 s hear no speech (no decode, the buffer keeps its last 0.6 s); 4 s decodes "hello";
    # 5 s agrees on it and the end of speech at 4.5 commits "there"; 6 s is silence again
    assert len(engine.prompts) == 2
    assert [u.compute_s for u in trace.updates] == pytest.approx([0, 0, 0, 0.3, 0.3, 0])
    assert [u.committed for u in trace.updates][3:] == [(), ("hello", "there"), ("hello", "there")]
    assert [u.tentative for u in trace.updates][3] == ("hello",)
    assert (policy.settings()["endpoints"], policy.settings()["skipped_updates"]) == (1, 4)
    # each look reads the audio since the buffer start, at most the new second plus 0.6 s before it
    read = [(0.0, 1.0), (0.4, 2.0), (1.4, 3.0), (2.4, 4.0), (3.4, 5.0), (4.5, 6.0)]
    assert [x for r in vad.read_s for x in r] == pytest.approx([x for r in read for x in r])


def test_make_policy_runs_silero_for_endpoint_vad_and_none_without_one():
    engine = ScriptedWhisper([], 0.0)
    vad = make_policy("local_agreement", engine, RATE, StreamingConfig(endpoint="vad"))
    assert isinstance(vad.endpointer.vad, SileroVad) and vad.endpointer.silence_s == 0.1
    assert vad.settings()["endpoint_vad"] == "silero"
    assert make_policy("local_agreement", engine, RATE, StreamingConfig(endpoint="none")).endpointer is None
    # silero on digital silence hears nothing; on a loud tone it still hears no speech (a detector, not energy)
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(2 * RATE) / RATE)).astype(np.float32)
    assert vad.endpointer.vad.speech_s(np.zeros(2 * RATE, np.float32), RATE, 0.1) == []
    assert vad.endpointer.vad.speech_s(tone, RATE, 0.1) == []
    assert "endpoint" in Chunked(engine, RATE).settings()  # says it does not apply


def test_endpoint_vad_without_faster_whisper_names_the_extra(monkeypatch):
    import importlib.util
    import sys

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "faster_whisper" else real(name, *a))
    data = {"models": [{"name": "whisper-tiny.en", "engine": "ct2", "dtype": "int8"}], "run": {"scenarios": ["streaming"]}}
    with pytest.raises(ConfigError, match=r"streaming.endpoint = 'vad': `faster-whisper` \(silero VAD\) is needed: "
                                          r"pip install 'asrperf\[ct2\]', or set streaming.endpoint = \"none\""):
        config_from_dict({**data, "streaming": {"endpoint": "vad"}})
    config_from_dict(data)  # the default, pure LocalAgreement, needs no VAD
    monkeypatch.setitem(sys.modules, "faster_whisper.vad", None)  # the import fails
    with pytest.raises(MissingExtraError, match=r"`faster-whisper` is needed for streaming.endpoint = 'vad' "
                                                r"\(silero VAD\): pip install 'asrperf\[ct2\]'"):
        SileroVad()


# -- the simulated clock, by hand -------------------------------------------------------------------

WORDS = [W("alpha", 0.2, 0.6), W("bravo", 0.7, 1.3), W("charlie", 1.5, 2.1), W("delta", 2.4, 2.9)]
UTTERANCES = {"utterances_s": ((0.0, 1.4), (1.4, 3.0)), "utterance_words": (("alpha", "bravo"), ("charlie", "delta")),
              "reference_end_s": (0.6, 1.3, 2.1, 2.9)}


@pytest.mark.parametrize("compute_s, updates, finalization, emission, rtf, missed", [
    # fast: one chunk per update; commits at 2.3 (alpha), 3.3 (bravo), 4.3 (charlie, delta at the end)
    (0.3, [(1, 1.0, 1.3), (1, 2.0, 2.3), (1, 3.0, 3.3), (1, 4.0, 4.3)], [3.3 - 1.4, 4.3 - 3.0],
     [2.3 - 0.6, 3.3 - 1.3, 4.3 - 2.1, 4.3 - 2.9], [0.3] * 4, [False] * 4),
    # slow: updates fall behind and take the chunks that arrived meanwhile (computationally aware)
    (1.5, [(1, 1.0, 2.5), (1, 2.5, 4.0), (2, 4.0, 5.5)], [5.5 - 1.4, 5.5 - 3.0],
     [4.0 - 0.6, 5.5 - 1.3, 5.5 - 2.1, 5.5 - 2.9], [1.5, 1.5, 0.75, 0.75], [True] * 4),
])
def test_simulated_latencies_equal_the_hand_computed_ones(compute_s, updates, finalization, emission, rtf, missed):
    clock = FakeClock()
    engine = ScriptedWhisper(WORDS, compute_s, clock)
    audio = np.zeros(4 * RATE, dtype=np.float32)
    trace = run_stream(LocalAgreement(engine, RATE), audio, RATE, 1.0, "simulated", "c", timer=clock, **UTTERANCES)
    assert [u.n_chunks for u in trace.updates] == [n for n, _, _ in updates]
    assert [x for u in trace.updates for x in (u.ready_s, u.done_s)] == pytest.approx([x for _, *t in updates for x in t])
    assert all(u.compute_s == pytest.approx(compute_s) for u in trace.updates)
    assert trace.final_words == ("alpha", "bravo", "charlie", "delta")
    m, method = stream_metrics(trace)
    assert method == "aligned"
    assert m.first_partial_s == pytest.approx([updates[0][2]])  # alpha shown (tentative) after the first update
    assert m.finalization_s == pytest.approx(finalization)
    assert m.emission_delay_s == pytest.approx(emission)
    assert m.chunk_rtf == pytest.approx(rtf) and m.chunk_missed == missed
    assert m.revised_share == 0.0


def test_realtime_clock_sleeps_until_each_chunk_is_spoken():
    clock = FakeClock()
    slept = []

    def sleep(s: float) -> None:
        slept.append(s)
        clock.t += s

    engine = ScriptedWhisper(WORDS, 0.3, clock)
    trace = run_stream(LocalAgreement(engine, RATE), np.zeros(4 * RATE, np.float32), RATE, 1.0, "realtime",
                       timer=clock, sleep=sleep, start_at=0.0)
    assert slept == pytest.approx([1.0, 0.7, 0.7, 0.7])
    assert [u.done_s for u in trace.updates] == pytest.approx([1.3, 2.3, 3.3, 4.3])


# -- metrics on literal traces ----------------------------------------------------------------------

def _u(committed: str, tentative: str = "", done: float = 0.0, **kw) -> Update:
    return Update(kw.pop("end", 1.0), kw.pop("n", 1), 0.0, done, kw.pop("compute", 0.1), tuple(committed.split()),
                  tuple(tentative.split()), **kw)


def test_commit_time_is_the_start_of_the_last_run_holding_the_final_word():
    ups = [_u("", "the ca", 1), _u("the", "cat", 2), _u("the cat", "", 3), _u("the cats", "", 4)]
    assert commit_times_s(ups, ["the", "cats"]) == [2, 4]


def test_stability_counts_revised_words_but_not_a_last_word_still_growing():
    ups = [_u("", "the ca", 1), _u("the", "cap sat", 2), _u("the cat sat", "", 3)]
    shown, revised = stability(ups, ["the", "cat", "sat"])
    # shown: the, ca (growing: not a revision), cap (revised), sat, cat
    assert (shown, revised) == (5, 1)


def test_chunk_deadlines_and_rtf():
    trace = StreamTrace("c", 0.5, 2.0, (_u("", done=0.6, end=0.5, compute=0.1), _u("", done=1.6, end=1.5, n=2, compute=0.6),
                                        _u("", done=2.2, end=2.0, compute=0.2)))
    rtf, missed = chunk_samples(trace)
    assert rtf == pytest.approx([0.2, 0.6, 0.6, 0.4])
    # deadlines: 1.0, 1.5, 2.0, 2.5 (arrival + chunk)
    assert missed == [False, True, False, False]


def test_frontier_finalization_uses_the_first_update_whose_final_audio_passes_the_utterance_end():
    ups = (_u("a", done=1.2, final_until_s=0.8), _u("a b", done=2.3, final_until_s=1.8), _u("a b", done=3.1, final_until_s=3.0))
    trace = StreamTrace("c", 1.0, 3.0, ups, utterances_s=((0.0, 0.8), (0.8, 2.5)), utterance_words=(("a",), ("b",)))
    m, method = stream_metrics(trace)
    assert method == "frontier" and m.finalization_s == pytest.approx([1.2 - 0.8, 3.1 - 2.5])


@pytest.mark.parametrize("ref, hyp, expected", [
    ("The birch canoe slid.", "the birch canoe lid", [0, 1, 2, 3]),  # punctuation and case go; slid->lid substituted
    ("glue the sheet", "glue uh the sheet", [0, 2, 3]),  # an insertion shifts the hypothesis indices
    ("It's easy", "it is easy", [1, 2]),  # "It's" normalises to two tokens; its last one is matched
    ("one two three", "one three", [0, None, 1]),
    ("a b", "", [None, None]),
])
def test_word_alignment(ref, hyp, expected):
    assert align_words(ref.split(), hyp.split()) == expected


def test_whisper_pieces_become_words_with_times():
    pieces = [" The", " bir", "ch", " plan", "ks", ",", " It", "'s", " well", "."]
    ends = [0.2, 0.3, 0.5, 0.8, 1.0, 1.1, 1.3, 1.4, 1.7, 1.9]
    words = words_from_tokens(pieces, ends)
    assert [(w.text, w.start_s, w.end_s) for w in words] == [
        ("The", 0.0, 0.2), ("birch", 0.2, 0.5), ("planks,", 0.5, 1.0), ("It's", 1.1, 1.4), ("well.", 1.4, 1.7)]


# -- CTC: forced alignment and chunked seams ------------------------------------------------------------

def test_ctc_forced_alignment_on_a_literal_table():
    # 6 frames, vocab (blank, A, B); the best path is A A - A B B, so "A A B" needs the blank between the As
    p = np.full((6, 3), 0.01)
    for t, k in enumerate([1, 1, 0, 1, 2, 2]):
        p[t, k] = 0.98
    spans = ctc_forced_align(np.log(p), [1, 1, 2], blank=0)
    assert spans == [(0, 1), (3, 3), (4, 5)]
    with pytest.raises(ValueError, match="cannot hold"):
        ctc_forced_align(np.log(p[:3]), [1, 1, 2], blank=0)


VOCAB = "_|abcdefghijklmnopqrstuvwxyz'"  # blank, word delimiter, letters
HOP = 320  # 20 ms frames at 16 kHz


def _ctc_audio(text: str) -> np.ndarray:
    """Frames whose sample value spells the label: each letter held 1-3 frames (a run the CTC collapse
    merges), then 1-2 blanks (doubled letters stay two), '|' between words; runs and words straddle seams."""
    labels = [0] * 5
    for i, ch in enumerate(text):
        hold = 1 + (i % 3)
        labels += [VOCAB.index("|" if ch == " " else ch)] * hold + [0] * (1 + (i % 2))
    labels += [0] * 7
    return np.repeat(np.array(labels, dtype=np.float32) / 100, HOP)


class StubCtc(Engine):
    """A frame-synchronous 'model' that reads the label from each 20 ms frame (no context needed);
    a trailing partial frame is dropped, as wav2vec2's receptive field does."""

    name = "stub-ctc"

    def load(self, spec, weights, dtype, device):
        pass

    def transcribe(self, audios, sample_rate):
        return Transcription([self.labels_text([f[0] for f in self.frame_labels(a, sample_rate).frames]) for a in audios],
                             [0] * len(audios))

    def model_family(self) -> str:
        return "ctc"

    def frame_labels(self, audio, sample_rate):
        n = len(audio) // HOP
        ids = np.rint(audio[: n * HOP].reshape(n, HOP).mean(axis=1) * 100).astype(int)
        return FrameLabels(HOP / sample_rate, tuple((int(i),) for i in ids), ctc=True, blank_id=0)

    def labels_text(self, ids):
        out, prev = [], None
        for i in ids:
            if i != prev and i != 0:
                out.append(" " if VOCAB[i] == "|" else VOCAB[i])
            prev = i
        return "".join(out).strip()


@pytest.mark.parametrize("chunk_s", [0.16, 0.25, 0.3, 0.47, 1.0])
@pytest.mark.parametrize("left_s, right_s", [(0.0, 0.0), (0.3, 0.1)])
def test_chunked_ctc_emits_every_word_once_whatever_the_seams(chunk_s, left_s, right_s):
    text = "the well worn canoe ssslid off the smooth planks"
    audio = _ctc_audio(text)
    engine = StubCtc()
    assert engine.transcribe([audio], RATE).texts[0] == text  # CTC collapse of the whole clip
    policy = Chunked(engine, RATE, left_s=left_s, right_s=right_s)
    trace = run_stream(policy, audio, RATE, chunk_s, "simulated", utterances_s=((0.0, len(audio) / RATE),),
                       utterance_words=(tuple(text.split()),))
    assert " ".join(trace.final_words) == engine.transcribe([audio], RATE).texts[0]
    finals = [u.final_until_s for u in trace.updates]
    assert finals == sorted(finals) and finals[-1] == len(audio) / RATE
    # what is shown is only ever appended to: committed words never change, except the last one growing
    m, method = stream_metrics(trace)
    assert method == "frontier" and m.revised_words == 0


# -- capacity ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("capacity, max_streams, tried", [
    (5, 16, [1, 2, 4, 8, 6, 5]), (0, 16, [1]), (16, 16, [1, 2, 4, 8, 16]), (3, 3, [1, 2, 3]), (9, 12, [1, 2, 4, 8, 12, 10, 9]),
])
def test_capacity_search_doubles_then_bisects_to_the_boundary(capacity, max_streams, tried):
    seen = []

    def probe(n: int) -> Probe:
        seen.append(n)
        return Probe(n, 0.0 if n <= capacity else 0.5, None, 0.1, n <= capacity, "kept up" if n <= capacity else "missed")

    result = search(probe, max_streams)
    assert result.streams == capacity and seen == tried
    assert ("max_streams" in result.stop_reason) == (capacity == max_streams)


def test_capacity_search_finds_a_stub_engines_known_capacity_on_the_wall_clock():
    # one shared engine, calls in turn, 88 ms each, 400 ms chunks: 4 streams need 352 ms of every 400 ms
    # (capacity 4); 5 need 440, so their queue grows 40 ms a chunk, which a 6-chunk probe cannot tell from
    # keeping up (within one stream); 6 need 528 and miss deadlines within the clip
    chunk_s, compute_s = 0.4, 0.088
    engine = ScriptedWhisper([], compute_s, sleep=True)
    from asrperf.scenarios.stream_capacity import StreamJob

    jobs = [StreamJob("c", np.zeros(int(6 * chunk_s * RATE), np.float32),
                      {"utterances_s": (), "utterance_words": (), "reference_end_s": ()})]

    def probe(n: int) -> Probe:
        traces = threaded_probe(lambda: LocalAgreement(engine, RATE), jobs, RATE, chunk_s, n)
        assert len(traces) == n
        return judge(n, traces, max_miss_share=0.01, max_finalization_p90_s=3.0)

    result = search(probe, max_streams=6)
    assert abs(result.streams - 4) <= 1, result.probes
    assert "max_streams" not in result.stop_reason  # 6 streams cannot keep up


# -- clips, configuration, cells ---------------------------------------------------------------------

def test_exact_clips_know_where_each_utterance_lies_and_the_cache_keeps_it(tmp_path):
    utts = [Utterance(f"u{i}", np.full(n_samples(s, RATE), 0.1, np.float32), RATE, t)
            for i, (s, t) in enumerate([(1.0, "one"), (1.5, "two three"), (2.0, "four")])]
    (clip,) = build_exact(iter(utts), 5.0, 1, RATE)
    assert clip.utterance_bounds == ((0, 16_000), (16_000, 40_000), (40_000, 72_000))
    assert clip.utterance_bounds_s == ((0.0, 1.0), (1.0, 2.5), (2.5, 4.5))
    assert clip.utterance_texts == ("one", "two three", "four")
    cache = ClipCache(tmp_path)
    cache.save("k", [clip], {})
    (back,) = cache.load("k", 1)
    assert back.utterance_bounds == clip.utterance_bounds and back.utterance_texts == clip.utterance_texts


def _cfg(**run) -> RunConfig:
    return config_from_dict({"models": [{"name": "whisper-tiny.en", "engine": "ct2", "dtype": "int8"}], "run": run})


def test_streaming_settings_leave_other_runs_identity_and_cell_keys_unchanged():
    base = _cfg()
    assert _cfg(chunk_ms=[500]).identity() == base.identity()  # only the streaming scenario reads chunk_ms
    stream = _cfg(scenarios=["streaming"], chunk_ms=[500, 1000])
    assert stream.identity() != _cfg(scenarios=["streaming"], chunk_ms=[500]).identity()
    # rows with and without the endpoint, or with another pause, are different runs
    ids = {dataclasses.replace(stream, streaming=StreamingConfig(endpoint=e, endpoint_silence_ms=ms)).identity()
           for e, ms in [("vad", 100), ("vad", 300), ("none", 100)]}
    assert len(ids) == 3 and stream.identity() in ids
    cells = expand(stream)
    assert [c.chunk_ms for c in cells] == [500] * 4 + [1000] * 4 and {c.batch_size for c in cells} == {1}
    assert cells[0].key.endswith("|streaming|chunk=500ms")
    latency = Cell(ModelConfig("whisper-tiny.en"), "cpu", 2, 5.0, 1, "latency")
    assert latency.key == "transformers|whisper-tiny.en|weights=auto|fp32|cpu|threads=2|5s|batch=1|latency"


@pytest.mark.parametrize("data, message", [
    ({"run": {"scenarios": ["streaming"], "chunk_ms": [5]}}, r"chunk_ms: 5 must be whole milliseconds in \[10, 30000\]"),
    ({"streaming": {"clock": "wall"}}, "streaming.clock: 'wall' is not one of simulated, realtime"),
    ({"streaming": {"agreement": 1}}, "streaming.agreement: 1 must be an integer >= 2"),
    ({"streaming": {"trim_s": "15"}}, r"config \[streaming\] trim_s: '15' is not a number"),
    ({"streaming": {"capacity_workers": "gpus"}}, "streaming.capacity_workers: 'gpus' is not one of threads, processes"),
    ({"streaming": {"endpoint": "silero"}}, "streaming.endpoint: 'silero' is not one of vad, none"),
    ({"streaming": {"endpoint_silence_ms": 10}}, r"streaming.endpoint_silence_ms: 10 must be milliseconds in \[32, 5000\]"),
    ({"streaming": {"endpoint_silence_ms": 0.3}}, r"config \[streaming\] endpoint_silence_ms: 0.3 is not a whole number"),
    ({"streaming": {"chunk": 1}}, "unknown key 'chunk' in config \\[streaming\\]"),
    ({"models": [{"name": "wav2vec2-base", "engine": "ct2"}]}, "engine ct2 has no streaming policy for ctc models; "
                                                               "engines that stream ctc models: transformers"),
    ({"models": [{"name": "wav2vec2-base", "engine": "ort"}]}, "engine ort has no streaming policy .*its exported graphs"),
])
def test_streaming_configuration_errors_name_the_key(data, message):
    data = {"models": [{"name": "whisper-tiny.en"}], **data}
    data["run"] = {"scenarios": ["streaming"], **data.get("run", {})}
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


def test_streaming_settings_round_trip_through_toml(tmp_path):
    from asrperf.config import dump_config, load_config

    cfg = dataclasses.replace(_cfg(scenarios=["streaming"], chunk_ms=[320]),
                              streaming=StreamingConfig(clock="realtime", right_context_ms=0, endpoint="none",
                                                        endpoint_silence_ms=250))
    path = tmp_path / "s.toml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


def test_engines_without_the_method_say_why():
    engine = StubCtc()
    with pytest.raises(StreamingUnsupported, match="engine stub-ctc gives no word timestamps"):
        engine.transcribe_words(np.zeros(RATE, np.float32), RATE)
    with pytest.raises(StreamingUnsupported, match="engine stub-ctc has no forced alignment"):
        engine.align_reference(np.zeros(RATE, np.float32), RATE, ["a"])
