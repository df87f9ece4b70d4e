"""torch's CPU kernels pinned to one instruction set, for the demo's numbers to repeat.

torch, oneDNN and MKL pick their kernels by the host's instruction set, and AVX2 and AVX-512
kernels round differently: unpinned, the same seed and versions trained the demo to 40.0% ->
82.8% held-out EM on an AVX2 host and 33.5% -> 70.5% on an AVX-512 one. The pin does not make
CPUs agree (an Intel AVX-512 host with all three variables set trained to 34.5% -> 69.2%; the
demo's MEASURED runs say what to expect), but it takes away the largest difference.

Each library reads its variable once, when it first runs a kernel, and importing the stack runs
some (peft imports bitsandbytes, which probes its CPU kernels), so `pin` must come before the
imports: `research-r1 demo` pins in cli.py, before the demo's module is imported, and a script
pins at its top. This module imports nothing that computes.
"""

from __future__ import annotations

import os

PINNED_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}


def pin() -> None:
    """Pin the kernels to AVX2, except where the caller set a variable already."""
    for name, value in PINNED_KERNELS.items():
        os.environ.setdefault(name, value)


def in_force() -> dict[str, str]:
    """The kernels torch runs (`aten`) and the variables set, with a warning when the pin did
    not hold (something computed with torch before `pin`)."""
    import torch
    from rich.console import Console

    kernels = {"aten": torch.backends.cpu.get_cpu_capability()}
    kernels.update({name: os.environ.get(name, "") for name in PINNED_KERNELS})
    if kernels["aten"] != "AVX2" and kernels["ATEN_CPU_CAPABILITY"].upper() == "AVX2":
        Console(stderr=True).print(
            f"[yellow]torch runs {kernels['aten']} CPU kernels, not AVX2: the pin did not "
            "hold (torch computed before it), and the numbers may fall outside the measured "
            "spread[/yellow]"
        )
    return kernels
