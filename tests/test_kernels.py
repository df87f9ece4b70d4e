"""The CPU kernel pin: set before anything computes, it holds through the whole stack's imports
(peft's import of bitsandbytes runs kernels); a variable the caller set is kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from research_r1.kernels import PINNED_KERNELS


def in_a_fresh_process(code: str, **env: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if k not in PINNED_KERNELS}
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=clean | env,
        timeout=240,
        check=True,
    )
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.slow
def test_the_demo_command_pins_the_kernels_before_its_imports_compute():
    """What `research-r1 demo` does: cli pins, then imports the demo's module (and with it
    transformers, peft and bitsandbytes)."""
    kernels = in_a_fresh_process(
        "import json, sys\n"
        "from research_r1 import cli\n"
        "from research_r1.kernels import in_force\n"
        "cli.parse(['demo', '--smoke'])\n"
        "print(json.dumps(in_force()))"
    )
    assert kernels == {"aten": "AVX2", **PINNED_KERNELS}


@pytest.mark.slow
def test_a_variable_the_caller_set_is_kept():
    kernels = in_a_fresh_process(
        "import json\n"
        "from research_r1 import kernels\n"
        "kernels.pin()\n"
        "print(json.dumps(kernels.in_force()))",
        ATEN_CPU_CAPABILITY="default",
    )
    assert kernels["ATEN_CPU_CAPABILITY"] == "default"
    assert kernels["aten"] == "DEFAULT"
    assert (kernels["ONEDNN_MAX_CPU_ISA"], kernels["MKL_CBWR"]) == ("AVX2", "AVX2")
