"""`research-r1 eval --backend vllm` plays the same greedy episodes as `--backend transformers`:
the same traces, byte for byte, on the shaped tiny model (which searches on its question). The
vLLM run is a subprocess, as the session's engine already holds this one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm")

# Only the question the model was shaped on: on any other prompt the random model's greedy text
# parts between vLLM's repacked CPU matrix products and torch's within a few dozen tokens (near
# ties), as it would between any two kernels; the shaped episode has margins to spare.
QUESTIONS = [("q1", "who wrote hamlet?", ["shakespeare"])]
# The shaped model's one-token query on the hamlet question is "</information>", which BM25 reads
# as "information": only the first passage matches it.
CORPUS = [
    '"hamlet"\nshakespeare wrote hamlet in london; more information at the globe',
    '"paris"\nparis is the capital of france',
]


def eval_command(tiny, root: Path, backend: str) -> list[str]:
    return [
        *(sys.executable, "-m", "research_r1.cli", "eval", str(tiny.path)),
        *("--template", str(root / "template.yaml"), "--datasets", f"toy={root / 'toy.jsonl'}"),
        *("--retriever", str(root / "bm25.yaml"), "--top-k", "2", "--max-turns", "2"),
        *("--backend", backend, "--batch-size", "1", "--output_dir", str(root / backend)),
    ]


def test_vllm_and_transformers_write_the_same_traces(tiny, tmp_path):
    from helpers import write_bm25, write_qa

    write_qa(tmp_path / "toy.jsonl", QUESTIONS)
    write_bm25(tmp_path, CORPUS)  # tmp_path / "bm25.yaml"
    # The prompt the tiny model was shaped on: "Question: who wrote hamlet?\n", no chat template.
    (tmp_path / "template.yaml").write_text(
        'name: plain\nprotocol: search_r1\nuser: "Question: {question}\\n"\nchat: false\n'
    )

    # As a user runs it: vLLM's engine and workers in processes of their own (this session's
    # engine runs in the test process instead).
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    traces = {}
    for backend in ("transformers", "vllm"):
        run = subprocess.run(
            eval_command(tiny, tmp_path, backend),
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        lines = (tmp_path / backend / "agent" / "traces" / "toy.jsonl").read_text().splitlines()
        # the run's fingerprint names its backend; everything else must agree
        traces[backend] = [{**json.loads(line), "run": None} for line in lines]

    [hamlet] = traces["transformers"]
    assert hamlet["searches"] == 1 and hamlet["retrieved_ids"] == [["0"]]
    assert hamlet["turns"] == 2 and hamlet["error"] is None
    assert traces["vllm"] == traces["transformers"]
