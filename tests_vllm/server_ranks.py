"""One rank of a multi-process run of `VLLMServerGenerator`, launched by `torchrun` from
`test_vllm_server.py`: `server_ranks.py BASE_URL SPEC_JSON OUT_DIR`.

The spec holds the stop strings and, for each `generate` call, every rank's rows as
`[context_ids, budget]` pairs. Ranks talk over gloo (accelerate's CPU backend); only rank 0 holds
TRL's `VLLMClient`, as in a GRPOTrainer. Each rank writes its results to `OUT_DIR/rank<i>.json`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path


def main() -> None:
    from accelerate import PartialState

    from research_r1.generation_vllm import VLLMServerGenerator

    base_url, spec_path, out_dir = sys.argv[1:]
    spec = json.loads(Path(spec_path).read_text())
    state = PartialState(cpu=True)
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


if __name__ == "__main__":
    main()
