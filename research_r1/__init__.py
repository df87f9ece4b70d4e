"""research_r1: train LLMs with GRPO to reason and call a search engine (Search-R1, ReSearch)."""

import logging

__version__ = "0.1.0"


def _without_the_optional_kernel_notice(record: logging.LogRecord) -> bool:
    """bitsandbytes (0.50, backends/cpu/ops.py), on a CPU with AVX512-BF16, tries at import to
    fetch an optional faster 4-bit CPU kernel with the `kernels` package and, without it, warns
    `Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'`
    and uses its own kernel instead. Every command imports bitsandbytes where it is installed
    (sentence-transformers imports transformers' Trainer, which imports peft, which imports
    it), so every command printed that line although nothing is wrong: that one message is
    dropped, every other one of that logger kept."""
    return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward from kernels-")


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_without_the_optional_kernel_notice)
