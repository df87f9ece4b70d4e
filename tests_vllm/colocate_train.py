"""A TRL 1.16 GRPOTrainer in vLLM colocate mode playing search episodes, run by
`test_vllm_colocate.py` in a process of its own (TRL starts its own engine, with vLLM's
`external_launcher`): `colocate_train.py MODEL_DIR OUT_DIR`. Like training, it calls
`prepare_cpu_colocate` first: TRL's engine would otherwise size no KV cache of its own and, where
vLLM repacks its linear weights (AVX-512 hosts), refuse TRL's weight sync.

It trains two steps, with the episode metrics training adds to every run (weight 0), and writes
`OUT_DIR/report.json`: the trainer's log, what `vllm_generator_for` built from the trainer, and
how far the engine's weights were from the trained model's before and after TRL's weight sync,
the engine's weight dtype, KV cache size and whether its linear layers kept their weights.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

PARAMETER = "model.layers.0.mlp.down_proj.weight"


class FixedRetriever:
    def search(self, queries: Sequence[str], k: int) -> list:
        from research_r1.retrieval import Passage

        return [[Passage(f"{q}#{i}", f"t\nabout {q}", 1.0) for i in range(k)] for q in queries]


def alternate(prompts: list, completions: list, **columns) -> list[float]:
    """Rewards that differ within every group of two, so each step has something to learn."""
    return [float(i % 2) for i in range(len(completions))]


def main() -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer
    from vllm.model_executor.layers.linear import LinearBase

    from research_r1.generation_vllm import prepare_cpu_colocate, vllm_generator_for
    from research_r1.protocol import SEARCH_R1
    from research_r1.training.trl_rollout import make_episode_metrics, make_rollout_func

    model_dir, out_dir = sys.argv[1:]
    args = GRPOConfig(
        output_dir=out_dir,
        use_cpu=True,
        bf16=False,
        use_vllm=True,
        vllm_mode="colocate",
        vllm_max_model_length=512,
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=48,
        max_steps=2,
        reward_weights=[1.0, 0.0],  # as training weighs its episode metrics
        learning_rate=5e-2,
        temperature=0.9,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        gradient_checkpointing=False,
    )
    prepare_cpu_colocate(args)  # as training does before TRL starts its engine
    prompts = ["Question: who wrote hamlet?\n", "Question: where is paris?\n"] * 2
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        reward_funcs=[alternate, make_episode_metrics(SEARCH_R1)],
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts, "golden_answers": [["x"]] * 4}),
        rollout_func=make_rollout_func(
            FixedRetriever(), SEARCH_R1, k=2, max_turns=2, max_new_tokens=12
        ),
    )
    engine = trainer.vllm_generation.llm
    engine_model = engine.llm_engine.model_executor.driver_worker.model_runner.model

    def trained() -> torch.Tensor:
        return dict(trainer.model.named_parameters())[PARAMETER].detach().float()

    def weight_gap() -> float:
        served = dict(engine_model.named_parameters())[PARAMETER].detach().float()
        return (trained() - served).abs().max().item()

    generator = vllm_generator_for(trainer)
    trainer.train()
    gap_before_sync = weight_gap()  # the last step's update has not been pushed yet
    trainer.vllm_generation.sync_weights()
    report = {
        "log_history": trainer.state.log_history,
        "generator_uses_trainer_engine": generator.llm is engine,
        "generator_sampling": generator.sampling,
        "gap_before_sync": gap_before_sync,
        "gap_after_sync": weight_gap(),
        "served_dtype": str(dict(engine_model.named_parameters())[PARAMETER].dtype),
        "bfloat16_rounding": (trained() - trained().bfloat16().float()).abs().max().item(),
        "kv_cache_memory_bytes": engine.llm_engine.vllm_config.cache_config.kv_cache_memory_bytes,
        "linear_layers_keep_weights": all(
            module.weight.numel() > 0 and hasattr(module.weight, "weight_loader")
            for module in engine_model.modules()
            if isinstance(module, LinearBase)
        ),
    }
    Path(out_dir, "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
