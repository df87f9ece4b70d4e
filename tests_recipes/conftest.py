"""The main suite's hermetic Hub environment and its `hub` fixture (a loopback Hub server), for
the recipe runs: `tests/conftest.py` is loaded as a module, so its environment is set before
anything imports huggingface_hub, and the training subprocesses inherit it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))  # loopback_hub, live_server
_spec = importlib.util.spec_from_file_location("hermetic_hub", TESTS / "conftest.py")
_hermetic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_hermetic)

hub = _hermetic.hub
