"""The memory estimate (research_r1.training.memory): exact parameter counts, weights by dtype and
4-bit quantisation, LoRA as peft makes it, exact items on a small case, sharding, what TRL keeps
as the recipe says, and GPU memory sizes."""

from __future__ import annotations

import pytest
import torch
from helpers import ROOT
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, Qwen3Config

from research_r1.training.configs import parse_recipe
from research_r1.training.dry_run import parsed_as_on_gpu
from research_r1.training.memory import (
    LINEARS,
    Architecture,
    GiB,
    Setup,
    estimate,
    four_bit_bytes,
    parse_size,
    setup_for,
    trainable_parameters,
    weight_bytes,
)


def architecture(name: str) -> Architecture:
    return Architecture.from_config(
        AutoConfig.from_pretrained(ROOT / "recipes/architectures" / name)
    )


# ---------------------------------------------------------------------------------------------
# Parameter counts, weights and adapters


def test_parameter_counts_are_exact():
    """Qwen2.5's published totals, from the config alone: embeddings, q/k/v with their biases,
    o, gate, up, down, norms, and lm_head unless tied (3B ties it)."""
    assert architecture("Qwen/Qwen2.5-7B").parameters() == 7_615_616_512
    assert architecture("Qwen/Qwen2.5-7B-Instruct").parameters() == 7_615_616_512
    assert architecture("Qwen/Qwen2.5-3B").parameters() == 3_085_938_688

    # Other shapes (attention and MLP biases, separate head_dim, q/k norms, tied head), counted
    # against the model itself built on the meta device (no memory, no weights).
    small = dict(vocab_size=1000, hidden_size=64, intermediate_size=176, num_hidden_layers=3)
    small.update(num_attention_heads=8, num_key_value_heads=2)
    for config in [
        LlamaConfig(**small, attention_bias=True, mlp_bias=True),
        Qwen3Config(**small, head_dim=16, tie_word_embeddings=True),
    ]:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        assert Architecture.from_config(config).parameters() == model.num_parameters()


def test_weights_by_dtype_and_4bit_quantisation():
    arch = architecture("Qwen/Qwen2.5-7B")
    assert weight_bytes(arch, Setup(weight_bytes=2)) == 7_615_616_512 * 2

    # NF4 with nested quantisation: 4 bits per linear weight plus 8/64 + 32/(64 x 256) bits of
    # constants (QLoRA paper, section 3: 0.127 bits); plain absmax costs 32/64 bits.
    assert four_bit_bytes(64 * 256 * 8, nested=True) * 8 == 64 * 256 * 8 * (4 + 0.125) + 32 * 8
    assert four_bit_bytes(64 * 256 * 8, nested=False) * 8 == 64 * 256 * 8 * 4.5
    linear, rest = 6_525_288_448, 1_090_328_064  # embeddings, lm_head, norms, biases stay bf16
    assert arch.linear_weights() == linear and arch.other_parameters() == rest
    nf4 = linear // 2 + linear // 64 + 4 * linear // (64 * 256)
    assert weight_bytes(arch, Setup(four_bit=True, nested_quant=True)) == nf4 + 2 * rest


def test_lora_parameters_and_their_dtype_are_what_peft_makes():
    """r x (in + out) per targeted linear per layer (161,480,704 at r 64 on Qwen2.5-7B's seven
    linears, as peft reports); peft keeps them in fp32 over a bf16 model, as `setup_for` says."""
    arch = architecture("Qwen/Qwen2.5-7B")
    assert trainable_parameters(arch, Setup(lora_r=64, lora_targets=LINEARS)) == 161_480_704
    assert trainable_parameters(arch, Setup(lora_r=16, lora_targets=LINEARS)) == 40_370_176

    config = LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    trainable = [p for p in model.parameters() if p.requires_grad]
    small = Architecture.from_config(config)
    setup = Setup(lora_r=4, lora_targets=("q_proj", "v_proj", "down_proj"))
    assert trainable_parameters(small, setup) == sum(p.numel() for p in trainable)
    assert {p.dtype for p in trainable} == {torch.float32}


# ---------------------------------------------------------------------------------------------
# The estimate


SMALL = Architecture(
    vocab=1000,
    hidden=64,
    intermediate=128,
    layers=2,
    heads=4,
    kv_heads=2,
    head_dim=16,
    tied=False,
    max_positions=4096,
    qkv_bias=True,
)


def test_every_item_on_a_small_case():
    """LoRA r 8 on the seven linears, a micro-batch of 2 x (16 + 48) tokens, checkpointed,
    vLLM colocated with half of a 2 MiB GPU, by hand:
    - parameters: linears 2 x 36,864, embeddings and head 2 x 64,000, biases and norms
      2 x (128 + 128), final norm 64: 202,304, at 2 bytes;
    - LoRA: 2 layers x 8 x (128 + 96 + 96 + 128 + 192 + 192 + 192) = 16,384 fp32 parameters,
      their gradients (4 bytes) and AdamW's two fp32 moments (8 bytes);
    - activations per token: each layer's input kept (2 x 64 bytes per layer) and one layer's
      full set recomputed: norms 2 x 4 x 64, norm outputs 2 x 2 x 64, SDPA's q, k, v, output
      and its copy 2 x (3 x 64 + 2 x 32), MLP 4 x 2 x 128, LoRA A outputs 7 x 2 x 8 = 2,416;
      plus the final norm's fp32 copy 4 x 64; for 128 tokens;
    - log-probs: one 96 x 1000 bf16 tile and 96 completion tokens x 64 x (2 + 4) bytes;
    - vLLM: 1 MiB whole, whose room after its weights holds 39 episodes of 64 tokens x
      2 x 2 layers x 2 KV heads x 16 x 2 bytes.
    """
    setup = Setup(
        lora_r=8,
        trainable_bytes=4,
        optimizer_bytes=8,
        micro_batch=2,
        prompt_tokens=16,
        completion_tokens=48,
        generation="vllm-colocate",
        vllm_fraction=0.5,
        generation_sequences=40,
    )
    result = estimate(SMALL, setup, gpu_bytes=2 * 1024**2)

    assert SMALL.parameters() == 202_304
    assert {item.name: (item.bytes, item.phase) for item in result.items} == {
        "weights": (404_608, "held"),
        "LoRA adapters": (65_536, "held"),
        "gradients": (65_536, "held"),
        "optimizer state": (131_072, "held"),
        "activations": ((2 * 2 * 64 + 2_416 + 4 * 64) * 128, "training"),
        "log-probs": (96 * 1000 * 2 + 96 * 64 * 6, "training"),
        "vLLM (colocated)": (1024**2, "held"),
    }
    assert result.total == 404_608 + 65_536 * 2 + 131_072 + 1024**2 + 374_784 + 228_864
    assert result.headroom == 2 * 1024**2 - result.total == -221_824
    assert result.kv_sequence_bytes == 64 * 256
    assert result.kv_room == 1024**2 - 404_608 and result.kv_held == 39
    assert result.verdict().startswith("does not fit: ")


def test_sharding_buckets_and_the_generation_phase():
    base = dict(micro_batch=1, prompt_tokens=16, completion_tokens=48, generation_sequences=8)

    def items(**settings) -> dict[str, int]:
        result = estimate(SMALL, Setup(**base, **settings), gpu_bytes=GiB)
        return {item.name: item.bytes for item in result.items}

    full = items()  # full fine-tuning: the weights train, bf16 AdamW moments
    assert full["gradients"] == 404_608 and full["optimizer state"] == 2 * 404_608
    zero3 = items(processes=4, sharding="zero3", optimizer_bytes=12)
    assert zero3["weights"] == 404_608 // 4 and zero3["gradients"] == 404_608 // 4
    assert zero3["optimizer state"] == 12 * 202_304 // 4
    zero2 = items(processes=4, sharding="zero2")
    assert zero2["weights"] == 404_608 and zero2["gradients"] == 404_608 // 4
    ddp = items(processes=4, sharding="ddp")
    assert ddp["weights"] == ddp["gradients"] == ddp["DDP gradient buckets"] == 404_608
    assert items(reference_copy=True)["reference model"] == 404_608

    # transformers generation: 8 episodes' KV cache, never during a backward.
    result = estimate(SMALL, Setup(**base), gpu_bytes=GiB)
    kv = {item.name: item for item in result.items}["KV cache (generation)"]
    assert (kv.bytes, kv.phase) == (8 * 64 * 256, "generation")
    held = sum(item.bytes for item in result.items if item.phase == "held")
    training = sum(item.bytes for item in result.items if item.phase == "training")
    assert result.total == held + max(training, kv.bytes)


def test_what_trl_keeps_is_read_from_the_recipe(in_repo):
    arch = architecture("Qwen/Qwen2.5-7B")
    with parsed_as_on_gpu():
        _, args, model_args = parse_recipe(["recipes/qwen7b_grpo.yaml"])
        _, q_args, q_model = parse_recipe(["recipes/qwen7b_qlora_grpo.yaml"])
        _, z_args, z_model = parse_recipe(
            ["recipes/qwen7b_grpo.yaml", "--generation_batch_size", "2560"]
        )

    lora = setup_for(
        args, model_args, arch, processes=8, sharding="ddp", generation_batch_set=False
    )
    assert (lora.lora_r, lora.trainable_bytes, lora.optimizer_bytes) == (64, 4, 8)  # peft: fp32
    assert lora.generation == "vllm-colocate" and lora.generation_sequences == 4 * 80
    assert (lora.context, lora.checkpointing, lora.micro_batch) == (4096, True, 4)

    qlora = setup_for(q_args, q_model, arch, 1, "none", generation_batch_set=False)
    assert (qlora.four_bit, qlora.nested_quant, qlora.trainable_bytes) == (True, True, 2)
    assert qlora.lora_dropout == 0.05 and qlora.generation_sequences == 8  # rollout_batch_size

    zero3 = setup_for(z_args, z_model, arch, 8, "zero3", generation_batch_set=True)
    assert (zero3.trainable_bytes, zero3.optimizer_bytes) == (2, 12)  # bf16, fp32 master + Adam
    assert zero3.generation_sequences == 2560 // 8


@pytest.mark.parametrize(
    ("text", "size_bytes"),
    [
        ("24GiB", 24 * GiB),
        ("24GB", 24 * 10**9),
        ("80", 80 * GiB),
        ("1.5 tib", int(1.5 * 1024 * GiB)),
    ],
)
def test_gpu_memory_sizes(text, size_bytes):
    assert parse_size(text) == size_bytes
