"""Adding a scenario is one module and one `register` call: this file is that module.

A toy scenario (each clip transcribed once, its word count recorded) runs through the real runner
in its own process (the worker imports this module there), is validated against its own schema
section, stored, and read back; nothing else in asrperf was edited for it.
"""

from dataclasses import dataclass
from typing import Any, ClassVar

from asrperf.results.schema import Section, doc, register_section
from asrperf.scenarios import SCENARIOS, register
from asrperf.scenarios.base import CellContext, Scenario


@dataclass(frozen=True)
class WordCountSection(Section):
    name: ClassVar[str] = "word_count"

    toy_words_per_clip: list | None = doc("words the engine returned for each clip, in clip order")
    toy_batches: list | None = doc("the batch sizes the scenario asked for")


register_section(WordCountSection)


class WordCount(Scenario):
    name = "toy_word_count"

    def batch_sizes(self, configured: tuple[int, ...]) -> tuple[int, ...]:
        return (1,)  # one cell per clip length, whatever batch sizes the run configures

    def run(self, ctx: CellContext) -> dict[str, Any]:
        out = ctx.engine.transcribe([c.audio for c in ctx.clips], ctx.clips[0].sample_rate)
        return {"toy_words_per_clip": [len(t.split()) for t in out.texts], "toy_batches": [len(ctx.clips)]}


register(WordCount())


def test_a_registered_scenario_runs_isolated_and_its_row_is_stored(run_rows):
    assert "toy_word_count" in SCENARIOS
    rows = run_rows([{"name": "whisper-tiny.en", "engine": "ct2", "dtype": "int8"}], lengths=[5],
                    scenarios=["toy_word_count"], batch_sizes=[1, 2], n_clips=2, isolate=True)
    (row,) = rows  # batch_sizes came from the scenario: one cell, not two
    assert row["scenario"] == "toy_word_count" and row["batch_size"] == 1
    words = row["toy_words_per_clip"]
    assert len(words) == 2 and all(n >= 3 for n in words)  # real tiny.en on real speech: sentences
    assert row["toy_batches"] == [2]
    assert row.section("word_count").toy_words_per_clip == words  # the typed section, not only a key
    assert row["weights"] == "real" and row["runs_torch"] is False  # the worker's provenance, as for any scenario
