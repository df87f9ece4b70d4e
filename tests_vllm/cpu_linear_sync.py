"""A float32 engine with `keep_cpu_linear_weights`, then a weight sync as TRL's colocate mode does
it, run by `test_vllm_cpu_linear.py` in a process of its own (one engine per process):
`cpu_linear_sync.py MODEL_DIR OUT_DIR PROMPT_IDS_JSON`.

It writes `OUT_DIR/report.json`: each linear layer's weight as the engine holds it, and greedy
continuations of the prompt from vLLM and from transformers, before and after new weights are
loaded into the engine.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

MAX_TOKENS = 16


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.model_executor.layers.linear import LinearBase

    from research_r1.generation_vllm import keep_cpu_linear_weights

    model_dir, out_dir, prompt_json = sys.argv[1:]
    prompt = json.loads(prompt_json)
    keep_cpu_linear_weights()
    keep_cpu_linear_weights()
    llm = LLM(
        model=model_dir,
        dtype="float32",
        enforce_eager=True,
        max_model_len=512,
        kv_cache_memory_bytes=64 * 2**20,
        distributed_executor_backend="uni",
        seed=0,
    )
    engine_model = llm.llm_engine.model_executor.driver_worker.model_runner.model
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def served() -> list[int]:
        params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
        output = llm.generate([TokensPrompt(prompt_token_ids=prompt)], params, use_tqdm=False)
        return list(output[0].outputs[0].token_ids)

    def reference() -> list[int]:
        with torch.no_grad():
            ids = model.generate(torch.tensor([prompt]), max_new_tokens=MAX_TOKENS, do_sample=False)
        return ids[0, len(prompt) :].tolist()

    layers = {
        name: {
            "numel": module.weight.numel(),
            "weight_loader": hasattr(module.weight, "weight_loader"),
        }
        for name, module in engine_model.named_modules()
        if isinstance(module, LinearBase)
    }
    before, reference_before = served(), reference()

    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:  # the embedding (tied to the LM head) and linear layers
                parameter.add_(torch.randn_like(parameter) * parameter.std())
    for name, parameter in model.named_parameters():  # as TRL's colocate `sync_weights` does
        engine_model.load_weights([(name, parameter.data)])
    llm.reset_prefix_cache()

    report = {
        "layers": layers,
        "before": before,
        "reference_before": reference_before,
        "after": served(),
        "reference_after": reference(),
    }
    Path(out_dir, "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
