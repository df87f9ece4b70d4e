"""One rank of a multi-process run of `VLLMServerGenerator`, launched by `torchrun` from
`test_vllm_server.py`: `server_ranks.py BASE_URL SPEC_JSON OUT_DIR`.

The spec holds the stop strings and, for each `generate` call, every rank's rows as
`[context_ids, budget]` pairs. Ranks talk over gloo (accelerate's CPU backend); only rank 0 holds
TRL's `VLLMClient`, as in a GRPOTrainer. Each rank writes its results to `OUT_DIR/rank<i>.json`.

Each rank destroys its process group before it exits. Otherwise gloo's worker thread may still
hold the last collective's tensors when the interpreter shuts down; releasing them takes the GIL,
which a thread cannot get during shutdown, and the rank aborts ("terminate called without an
active exception", SIGABRT) after writing its results. With `SERVER_RANKS_LAGGING_GLOO=1`, gloo's
threads are made to run last (`lag_gloo_threads`), so a rank that left work to them would abort
every time instead of once in a while on a loaded machine.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
from pathlib import Path


def lag_gloo_threads() -> None:
    """Keep this process on one CPU, put every thread but this one (gloo's, started with the
    process group) in the idle scheduling class, which hardly runs while this thread does, and
    let this thread keep the GIL until it waits: gloo's threads then finish their part of a
    collective late, as on a loaded machine, and one still holding Python's tensors when the
    interpreter shuts down aborts the process."""
    main = threading.get_native_id()
    cpu = min(os.sched_getaffinity(0))
    for tid in map(int, os.listdir("/proc/self/task")):
        try:
            os.sched_setaffinity(tid, {cpu})
            if tid != main:
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        except ProcessLookupError:  # a thread that has ended since the listing
            pass
    sys.setswitchinterval(3600)


def main() -> None:
    from accelerate import PartialState

    from research_r1.generation_vllm import VLLMServerGenerator

    base_url, spec_path, out_dir = sys.argv[1:]
    spec = json.loads(Path(spec_path).read_text())
    state = PartialState(cpu=True)
    try:
        if os.environ.get("SERVER_RANKS_LAGGING_GLOO") == "1":
            lag_gloo_threads()
        client = None
        if state.is_main_process:
            from trl.generation.vllm_client import VLLMClient

            client = VLLMClient(base_url=base_url, connection_timeout=60)
        generator = VLLMServerGenerator(state, client, temperature=0.0)
        results = []
        for call in spec["calls"]:
            rows = call[state.process_index]
            generations = generator.generate(
                [ids for ids, _ in rows], [budget for _, budget in rows], spec["stop"]
            )
            results.append([dataclasses.asdict(generation) for generation in generations])
        Path(out_dir, f"rank{state.process_index}.json").write_text(json.dumps(results))
    finally:
        state.destroy_process_group()


if __name__ == "__main__":
    main()
