"""Rows written by earlier asrperf versions, brought to the current schema.

Version 1 rows (before results/schema.py) held a few facts only as prose or by the presence of a
key. This module is the one place that reads them, once, when an old store is opened; everything
after it reads the typed fields.
"""

from __future__ import annotations

from typing import Any

from asrperf.results.schema import engine_fields

# In version 1 the accuracy gate preferred the fp32 baseline of these engines (report/gate.py then
# held the list); version 2 records the fact on each row as `accuracy_reference`.
V1_REFERENCE_ENGINES = frozenset({"transformers"})
# Version 1's weights_bytes_method of a runtime's model files said so in words.
_V1_FILE_SIZE_WORDS = "file size"
_V1_COUNTER_FAILED = "FLOP counter failed"


def v1_to_v2(row: dict[str, Any]) -> dict[str, Any]:
    """The version-2 flat form of a version-1 row: typed facts added, unknown engine keys set aside."""
    out = dict(row)
    # the earliest version-1 rows had neither key: the configured name and weights were these
    out.setdefault("model_name", row.get("model"))
    out.setdefault("weights_requested", row.get("weights"))
    if out.get("status") == "ok" or "torch_version" in out or "engine_version" in out:
        # v1: only engines that run their model on torch recorded torch_version
        out.setdefault("runs_torch", "torch_version" in row)
    out.setdefault("accuracy_reference", row.get("engine") in V1_REFERENCE_ENGINES)
    policy = str(row.get("tokens_policy") or "")
    for kind in ("real", "fixed", "n/a"):
        if policy.startswith(kind):
            out.setdefault("token_policy", kind)
    if row.get("weights_bytes") is not None:
        method = str(row.get("weights_bytes_method") or "")
        out.setdefault("weights_bytes_kind", "file_size" if _V1_FILE_SIZE_WORDS in method else "in_memory")
    if row.get("peak_method") or row.get("flops_per_call") is not None \
            or _V1_COUNTER_FAILED in str(row.get("flops_missing_reason") or ""):
        out.setdefault("flops_probe_ran", True)
    return engine_fields(out)


MIGRATIONS = {1: v1_to_v2}  # version -> the function that lifts its rows one version up
