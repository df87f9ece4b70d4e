"""Where `research-r1` writes: one output root for what a command makes, one cache folder for
what it derives.

Every subcommand that writes files writes them under its `--output_dir`, whose default is a
folder under the output root: `outputs/` in the current directory, or the folder the environment
variable `RESEARCH_R1_OUTPUTS` names. A path given explicitly (an option, a recipe's
`output_dir`) is used as given. Files derived from an input so that later runs start faster (a
corpus converted to Arrow, a split index reassembled) go to the cache folder,
`$HF_HOME/research_r1`, beside the Hugging Face caches, never beside the input (which may be
read-only, or shared).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

OUTPUTS_ENV = "RESEARCH_R1_OUTPUTS"
DEFAULT_OUTPUTS = "outputs"
_UNSAFE = re.compile(r"[^\w.@+-]+")
HELP = (  # the end of `--help` of every command with an --output_dir
    f"The default output folder is under {DEFAULT_OUTPUTS}/ in the current directory, or under "
    f"${OUTPUTS_ENV} when that is set; caches go under $HF_HOME/research_r1."
)


def outputs_root() -> Path:
    """`$RESEARCH_R1_OUTPUTS`, else `outputs` (relative: in the current directory)."""
    return Path(os.environ.get(OUTPUTS_ENV) or DEFAULT_OUTPUTS)


def output_dir(*parts: str) -> Path:
    """A command's default output folder: `parts` under the output root."""
    return outputs_root().joinpath(*parts)


def demo_dir() -> Path:
    """What `research-r1 demo` (`make demo`) writes by default, where `space` and `push-space`
    find the demo's model, retriever and questions."""
    return output_dir("demo")


def cache_dir(*parts: str) -> Path:
    """`parts` under `$HF_HOME/research_r1`: files derived from inputs, rebuilt when missing."""
    from huggingface_hub import constants  # read at call time: tests move HF_HOME

    return Path(constants.HF_HOME, "research_r1", *parts)


def folder_name(text: str) -> str:
    """`text` as one safe path component (a model id, an encoder, a FAISS factory string)."""
    return _UNSAFE.sub("_", text).strip("_.") or "_"
