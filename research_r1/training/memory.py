"""Per-GPU memory of a GRPO run, estimated from the model's config and the recipe, loading nothing.

An estimate, not a measurement: each item is a formula over the config's shapes, for a decoder of
the Llama/Qwen2 shape (GQA attention, SwiGLU MLP, RMSNorm) trained as TRL 1.16 trains it.

- weights: every parameter at the load dtype. A 4-bit base (bitsandbytes) packs the blocks'
  linear weights at half a byte each, plus one absmax per 64 of them (fp32; nested: 8-bit, with
  one fp32 per 256 of those); embeddings, lm_head, norms and biases stay at the load dtype.
- trainable parameters: LoRA's r x (in + out) per targeted linear per layer. peft keeps them in
  fp32 (`autocast_adapter_dtype`), except over a 4-bit base (TRL casts them to bf16) and under
  DeepSpeed (its bf16 engine casts the model). Full fine-tuning trains the weights themselves.
- gradients: one per trainable parameter at its dtype (DDP also keeps a flat copy in its buckets).
  Optimizer: torch AdamW keeps two moments at the parameter's dtype, 8-bit optimizers one byte
  each; DeepSpeed keeps an fp32 master copy and fp32 moments (12 bytes).
- activations and log-probs: see `layer_activation_bytes` and `logprob_bytes`.
- generation: colocated vLLM takes `vllm_gpu_memory_utilization` of the GPU whole (its copy of the
  weights, then KV cache); transformers' generation holds the KV cache of `rollout_batch_size`
  rows, while no backward runs, so the larger of the two phases counts.
- sharding: ZeRO-3 and FSDP divide weights, gradients and optimizer state by the processes,
  ZeRO-2 gradients and optimizer state, ZeRO-1 optimizer state; DDP divides nothing.

Left out: the CUDA context, cuBLAS/NCCL workspaces and allocator fragmentation (often 1-2 GiB),
and vLLM's own activation peak and CUDA graphs (inside its share, so its KV room is smaller).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from transformers import PretrainedConfig
from trl import ModelConfig
from trl.kernels.chunked_logprob import TOKEN_CHUNK_SIZE
from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

from research_r1.errors import InputError
from research_r1.training.configs import SearchGRPOConfig

GiB = 1024**3
# The longest prompt assumed (Search-R1's and ReSearch's are 200-400 tokens with the question).
PROMPT_TOKENS = 512
QUANT_BLOCK = 64  # weights per absmax in bitsandbytes' 4-bit blocks
NESTED_BLOCK = 256  # absmax values per fp32 constant when they are quantised too (nested)
MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SHARDED = {  # what each distribution divides by the process count: weights, gradients, optimizer
    "none": (False, False, False),
    "ddp": (False, False, False),
    "zero1": (False, False, True),
    "zero2": (False, True, True),
    "zero3": (True, True, True),
    "fsdp": (True, True, True),
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B)?\s*", re.IGNORECASE)
_UNITS = {"k": 1, "m": 2, "g": 3, "t": 4}


@dataclass(frozen=True)
class Architecture:
    """The shapes memory depends on, from a decoder's config."""

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    max_positions: int
    model_type: str = "qwen2"
    dtype_bytes: int = 2
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False

    @classmethod
    def from_config(cls, config: PretrainedConfig) -> Architecture:
        config = config.get_text_config()
        if config.model_type not in MODEL_TYPES:
            raise InputError(
                f"model_name_or_path: no memory estimate for model_type {config.model_type!r} "
                f"(known: {', '.join(MODEL_TYPES)})"
            )
        attention_bias = bool(getattr(config, "attention_bias", False))
        dtype = getattr(config, "dtype", None)
        return cls(
            vocab=config.vocab_size,
            hidden=config.hidden_size,
            intermediate=config.intermediate_size,
            layers=config.num_hidden_layers,
            heads=config.num_attention_heads,
            kv_heads=config.num_key_value_heads or config.num_attention_heads,
            head_dim=getattr(config, "head_dim", None)
            or config.hidden_size // config.num_attention_heads,
            tied=bool(config.tie_word_embeddings),
            max_positions=config.max_position_embeddings,
            model_type=config.model_type,
            dtype_bytes=dtype_bytes(dtype) if dtype is not None else 2,
            qkv_bias=config.model_type == "qwen2" or attention_bias,  # Qwen2: q, k, v biased
            o_bias=attention_bias,
            mlp_bias=bool(getattr(config, "mlp_bias", False)),
            qk_norm=config.model_type == "qwen3",
        )

    def linears(self) -> dict[str, tuple[int, int]]:
        """Each block linear's (in, out) features."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def linear_weights(self) -> int:
        """The blocks' linear weights: what a 4-bit load quantises."""
        return self.layers * sum(n_in * n_out for n_in, n_out in self.linears().values())

    def other_parameters(self) -> int:
        """Embeddings, lm_head unless tied, norms and biases: kept at the load dtype."""
        shapes = self.linears()
        biases = sum(shapes[name][1] for name in ("q_proj", "k_proj", "v_proj")) * self.qkv_bias
        biases += self.hidden * self.o_bias
        biases += (2 * self.intermediate + self.hidden) * self.mlp_bias
        norms = 2 * self.hidden + 2 * self.head_dim * self.qk_norm
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return embeddings + self.layers * (biases + norms) + self.hidden

    def parameters(self) -> int:
        return self.linear_weights() + self.other_parameters()

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """A key and a value per layer and KV head."""
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes


@dataclass(frozen=True)
class Setup:
    """One training process's settings that memory depends on (`setup_for` reads a recipe)."""

    weight_bytes: int = 2
    four_bit: bool = False
    nested_quant: bool = False
    lora_r: int = 0  # 0: full fine-tuning
    lora_targets: tuple[str, ...] = LINEARS
    lora_dropout: float = 0.0
    trainable_bytes: int = 2
    optimizer_bytes: int = 4  # per trainable parameter
    reference_copy: bool = False  # full fine-tuning with a KL term loads the model twice
    activation_bytes: int = 2
    lm_head_bytes: int = 2
    micro_batch: int = 1
    prompt_tokens: int = PROMPT_TOKENS
    completion_tokens: int = 256
    context: int | None = None  # vLLM's cap on prompt + completion (else the model's)
    checkpointing: bool = True
    checkpoint_every: int = 1
    checkpoint_offload: bool = False
    generation: str = "transformers"  # or "vllm-colocate", "vllm-server"
    vllm_fraction: float = 0.0
    generation_sequences: int = 1  # sequences one process generates at once
    processes: int = 1
    sharding: str = "none"  # a key of SHARDED


@dataclass(frozen=True)
class Item:
    """One line of the estimate. `phase`: `held` all run long; `training` during a micro-batch's
    forward and backward; `generation` while episodes are generated (never with a backward)."""

    name: str
    bytes: int
    phase: str
    how: str


@dataclass(frozen=True)
class Estimate:
    items: tuple[Item, ...]
    gpu_bytes: int
    sequence: int  # tokens of the longest episode: prompt + completion
    kv_sequence_bytes: int  # one such episode's KV cache
    kv_sequences: int  # episodes one process generates at once
    kv_room: int | None  # colocated vLLM's share less its weights, where its KV cache goes

    @property
    def total(self) -> int:
        """What is held, plus the larger of the training and generation phases."""
        held = sum(item.bytes for item in self.items if item.phase == "held")
        phases = [
            sum(item.bytes for item in self.items if item.phase == phase)
            for phase in ("training", "generation")
        ]
        return held + max(phases)

    @property
    def headroom(self) -> int:
        return self.gpu_bytes - self.total

    @property
    def kv_held(self) -> int | None:
        """Full-length episodes whose KV cache vLLM's room holds at once."""
        if self.kv_room is None:
            return None
        return max(0, self.kv_room) // self.kv_sequence_bytes

    def verdict(self) -> str:
        gpu, total = gib(self.gpu_bytes), gib(self.total)
        problems = []
        if self.headroom < 0:
            problems.append(f"{total} needed, {gib(-self.headroom)} over {gpu}")
        if self.kv_held == 0:
            problems.append(
                "vLLM's share cannot hold its weights and one full-length episode's KV cache; "
                "raise vllm_gpu_memory_utilization"
            )
        if problems:
            return f"does not fit: {'; '.join(problems)} (estimate)"
        return f"fits: {total} of {gpu}, {gib(self.headroom)} to spare (estimate)"


def gib(size: int) -> str:
    return f"{size / GiB:.2f} GiB"


def count(number: int) -> str:
    """A parameter count as people say it: 7.62B, 161.5M, 40,960."""
    if number >= 10**9:
        return f"{number / 1e9:.2f}B"
    return f"{number / 1e6:.1f}M" if number >= 10**6 else f"{number:,}"


def parse_size(text: str) -> int:
    """`24GiB`, `24GB` (10^9 bytes), `80` (GiB) as bytes."""
    match = _SIZE.fullmatch(text)
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a memory size; give e.g. 24GiB, 24GB or 80 (GiB)")
    number, unit = float(match.group(1)), (match.group(2) or "GiB").lower()
    base = 1024 if unit[1] == "i" else 1000
    return int(number * base ** _UNITS[unit[0]])


def dtype_bytes(dtype: str | torch.dtype) -> int:
    return torch.finfo(getattr(torch, dtype) if isinstance(dtype, str) else dtype).bits // 8


def four_bit_bytes(count: int, nested: bool) -> int:
    """One quantised tensor: packed 4-bit values and the absmax of each 64-value block."""
    blocks = math.ceil(count / QUANT_BLOCK)
    constants = blocks + 4 * math.ceil(blocks / NESTED_BLOCK) if nested else 4 * blocks
    return math.ceil(count / 2) + constants


def weight_bytes(arch: Architecture, setup: Setup) -> int:
    if not setup.four_bit:
        return arch.parameters() * setup.weight_bytes
    shapes = arch.linears().values()
    quantised = arch.layers * sum(four_bit_bytes(a * b, setup.nested_quant) for a, b in shapes)
    return quantised + arch.other_parameters() * setup.weight_bytes


def trainable_parameters(arch: Architecture, setup: Setup) -> int:
    if not setup.lora_r:
        return arch.parameters()
    shapes = arch.linears()
    return arch.layers * sum(setup.lora_r * sum(shapes[name]) for name in setup.lora_targets)


def layer_activation_bytes(arch: Architecture, setup: Setup) -> int:
    """Bytes one decoder layer keeps per token for its backward (a: the activations' bytes).

    Each RMSNorm keeps an fp32 copy of its input (4·H) and, when its weight trains, its output
    (a·H); the attention and MLP inputs are the norms' outputs (a·H each); SDPA keeps q, k, v
    and its output, o_proj the output's contiguous copy (a·(3·q + 2·kv)); the MLP keeps gate,
    SiLU(gate), up and their product (4·a·I); LoRA keeps A's output (a·r) per targeted linear
    and, with dropout, the dropped input and its mask ((a + 1)·in).
    """
    a, h = setup.activation_bytes, arch.hidden
    q, kv = arch.heads * arch.head_dim, arch.kv_heads * arch.head_dim
    total = 2 * 4 * h + 2 * a * h + a * (3 * q + 2 * kv) + 4 * a * arch.intermediate
    if not setup.lora_r:
        return total + 2 * a * h
    shapes = arch.linears()
    for name in setup.lora_targets:
        total += a * setup.lora_r + (a + 1) * shapes[name][0] * (setup.lora_dropout > 0)
    return total


def activation_bytes(arch: Architecture, setup: Setup, tokens: int) -> int:
    """A micro-batch's activations. With checkpointing, each checkpointed layer keeps only its
    input (a·H per token, none when offloaded to the host) and the backward recomputes one
    layer's full activations at a time; the other layers keep theirs. The final norm adds its
    fp32 copy (4·H)."""
    layer = layer_activation_bytes(arch, setup)
    final_norm = 4 * arch.hidden * tokens
    if not setup.checkpointing:
        return arch.layers * layer * tokens + final_norm
    checkpointed = math.ceil(arch.layers / setup.checkpoint_every)
    inputs = 0 if setup.checkpoint_offload else setup.activation_bytes * arch.hidden
    kept = checkpointed * inputs + (arch.layers - checkpointed + 1) * layer
    return kept * tokens + final_norm


def logprob_bytes(arch: Architecture, setup: Setup, scored: int) -> int:
    """TRL 1.16 never materialises the (batch, sequence, vocabulary) logits: its fused LM head
    (`trl.kernels.chunked_logprob`) projects tiles of 4096 tokens x 32768 vocabulary entries
    and keeps running log-sum-exp statistics. What it holds for the `scored` (completion)
    tokens: one tile, their gathered hidden states for the backward, and the backward's fp32
    gradient of them (and of lm_head's weight when it trains)."""
    b = setup.lm_head_bytes
    tile = min(scored, TOKEN_CHUNK_SIZE) * min(arch.vocab, _CHUNKED_LOGPROB_CHUNK_SIZE) * b
    head_gradient = 0 if setup.lora_r else 4 * arch.vocab * arch.hidden
    return tile + scored * arch.hidden * (b + 4) + head_gradient


def estimate(arch: Architecture, setup: Setup, gpu_bytes: int) -> Estimate:
    """Each item one process holds on its GPU, and when."""
    shard_weights, shard_gradients, shard_optimizer = SHARDED[setup.sharding]
    share = f" / {setup.processes} processes ({setup.sharding})"

    def sharded(size: int, divide: bool) -> tuple[int, str]:
        return (size // setup.processes, share) if divide and setup.processes > 1 else (size, "")

    items = []
    weights, note = sharded(weight_bytes(arch, setup), shard_weights)
    if setup.four_bit:
        how = f"{count(arch.linear_weights())} linear weights in 4 bits"
        how += " (nested absmax)" if setup.nested_quant else " (fp32 absmax)"
        how += f", {count(arch.other_parameters())} at {setup.weight_bytes} bytes{note}"
    else:
        how = f"{count(arch.parameters())} parameters x {setup.weight_bytes} bytes{note}"
    items.append(Item("weights", weights, "held", how))
    if setup.reference_copy:
        items.append(Item("reference model", weights, "held", "full fine-tuning, beta > 0"))

    trainable = trainable_parameters(arch, setup)
    number = count(trainable)
    if setup.lora_r:
        how = f"{number} = r {setup.lora_r} x (in + out) of {len(setup.lora_targets)} linears x "
        how += f"{arch.layers} layers, {setup.trainable_bytes} bytes each"
        items.append(Item("LoRA adapters", trainable * setup.trainable_bytes, "held", how))
    gradients, note = sharded(trainable * setup.trainable_bytes, shard_gradients)
    how = f"{number} x {setup.trainable_bytes} bytes{note}"
    items.append(Item("gradients", gradients, "held", how))
    optimizer, note = sharded(trainable * setup.optimizer_bytes, shard_optimizer)
    how = f"{number} x {setup.optimizer_bytes} bytes{note}"
    items.append(Item("optimizer state", optimizer, "held", how))
    if setup.sharding == "ddp" and setup.processes > 1:
        how = "a flat copy of the gradients for all-reduce"
        items.append(Item("DDP gradient buckets", gradients, "held", how))

    cap = setup.context or arch.max_positions
    sequence = min(setup.prompt_tokens + setup.completion_tokens, cap)
    tokens = setup.micro_batch * sequence
    checkpointing = "checkpointed" if setup.checkpointing else "not checkpointed"
    how = f"{setup.micro_batch} x {sequence} tokens, {checkpointing}"
    items.append(Item("activations", activation_bytes(arch, setup, tokens), "training", how))
    scored = setup.micro_batch * min(setup.completion_tokens, sequence - 1)
    how = f"fused LM head over {scored} completion tokens (no full logits)"
    items.append(Item("log-probs", logprob_bytes(arch, setup, scored), "training", how))

    kv_dtype = setup.weight_bytes if setup.generation == "vllm-colocate" else setup.activation_bytes
    kv_sequence = arch.kv_bytes_per_token(kv_dtype) * sequence
    kv_room = None
    if setup.generation == "vllm-colocate":
        vllm = int(setup.vllm_fraction * gpu_bytes)
        kv_room = vllm - arch.parameters() * setup.weight_bytes
        how = f"{setup.vllm_fraction} x {gib(gpu_bytes)}, taken whole: weights, then KV cache"
        items.append(Item("vLLM (colocated)", vllm, "held", how))
    elif setup.generation == "transformers":
        how = f"{setup.generation_sequences} episodes x {sequence} tokens, generated at once"
        kv = kv_sequence * setup.generation_sequences
        items.append(Item("KV cache (generation)", kv, "generation", how))
    return Estimate(
        items=tuple(items),
        gpu_bytes=gpu_bytes,
        sequence=sequence,
        kv_sequence_bytes=kv_sequence,
        kv_sequences=setup.generation_sequences,
        kv_room=kv_room,
    )


def distribution(accelerate: Mapping[str, Any], num_processes: int | None) -> tuple[int, str]:
    """Processes and sharding (a key of SHARDED) of an accelerate config, `--num_processes`
    overriding its count."""
    processes = num_processes or int(accelerate.get("num_processes") or 1)
    kind = accelerate.get("distributed_type", "NO")
    if kind == "DEEPSPEED":
        stage = int((accelerate.get("deepspeed_config") or {}).get("zero_stage", 0))
        return processes, f"zero{stage}" if stage else "ddp"
    if kind == "FSDP":
        return processes, "fsdp"
    return processes, "ddp" if processes > 1 else "none"


def setup_for(
    args: SearchGRPOConfig,
    model_args: ModelConfig,
    arch: Architecture,
    processes: int,
    sharding: str,
    generation_batch_set: bool,
) -> Setup:
    """A recipe's `Setup` on `processes` processes. The recipe was parsed on one process, so a
    `generation_batch_size` it sets is split over the processes (`generation_batch_set`);
    otherwise each process generates `per_device_train_batch_size x steps_per_generation`."""
    deepspeed = sharding.startswith("zero")
    load = model_args.dtype
    weights = arch.dtype_bytes if load in (None, "auto") else dtype_bytes(load)
    half = args.bf16 or args.fp16
    activations = 2 if half or weights == 2 else 4
    if model_args.use_peft:
        adapters = 2 if model_args.load_in_4bit or deepspeed else 4
    else:
        adapters = 2 if deepspeed else weights
    if deepspeed:
        optimizer = 12
    elif "8bit" in str(getattr(args.optim, "value", args.optim)):
        optimizer = 2
    else:
        optimizer = 2 * adapters
    targets = model_args.lora_target_modules
    if targets is None:
        targets = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(arch.model_type, [])
    elif isinstance(targets, str):
        targets = LINEARS if targets == "all-linear" else [targets]
    generation = f"vllm-{args.vllm_mode}" if args.use_vllm else "transformers"
    if generation_batch_set:
        per_process = args.generation_batch_size // processes
    else:
        per_process = args.per_device_train_batch_size * args.steps_per_generation
    if generation == "transformers":
        per_process = min(per_process, args.rollout_batch_size)
    kwargs = args.activation_checkpointing_kwargs or {}
    return Setup(
        weight_bytes=weights,
        four_bit=model_args.load_in_4bit,
        nested_quant=model_args.use_bnb_nested_quant,
        lora_r=model_args.lora_r if model_args.use_peft else 0,
        lora_targets=tuple(name for name in targets if name in LINEARS),
        lora_dropout=0.0 if args.disable_dropout else model_args.lora_dropout,
        trainable_bytes=adapters,
        optimizer_bytes=optimizer,
        reference_copy=not model_args.use_peft and args.beta != 0.0,
        activation_bytes=activations,
        lm_head_bytes=4 if args.cast_lm_head_to_fp32 else activations,
        micro_batch=args.per_device_train_batch_size,
        completion_tokens=args.max_completion_length,
        context=args.vllm_max_model_length if args.use_vllm else None,
        checkpointing=bool(args.activation_checkpointing),
        checkpoint_every=int(kwargs.get("every_n_layers", 1)),
        checkpoint_offload=bool(kwargs.get("offload", False)),
        generation=generation,
        vllm_fraction=args.vllm_gpu_memory_utilization,
        generation_sequences=per_process,
        processes=processes,
        sharding=sharding,
    )
