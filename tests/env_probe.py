"""A plugin module that stops the cell at import with the environment it sees (tests/test_run_e2e.py)."""

import os

raise RuntimeError(f"the cell's process sees CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}")
