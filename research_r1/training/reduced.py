"""A GPU recipe at reduced shape: everything as shipped but the model's size, the data and the
step count, so the recipe's whole path (4-bit loading, LoRA, vLLM, several processes, sharding,
checkpoints, pushes, the eval after training) runs on a CPU or a small GPU in minutes.

`make test-recipes` and `benchmarks/gpu_check.py` build one with `reduce_recipe`:
- the model: a random-init model of the recipe's own architecture class and config (read from
  `recipes/architectures/ORG/NAME/config.json`, the Hub's file, so nothing is downloaded), shrunk
  to `layers` blocks of `head_dim`-wide heads with the recipe's query/key-value head ratio, its
  intermediate/hidden ratio, tied or untied embeddings, rope and context as shipped; with a tiny
  word-level tokenizer (`research_r1.tiny`) in the recipe's template (chat or plain);
- the data: the demo's synthetic world (`research_r1.world`, with one city: the questions whose
  answer is that city) prepared in the recipe's template, with its corpus and a BM25 index;
- the overrides (`Reduced.overrides`): those, the step count, and the shape keys that scale a
  step's cost (`SHAPE`); every other key (LoRA/QLoRA, vLLM mode, loss, beta, generations,
  rewards, checkpointing, eval) stays the recipe's.

A random model seldom writes a tag, so every group would score the same and GRPO would learn
nothing: a model with an untied head gets a fixed logit bonus for the protocol's tags, the
world's answers and EOS (`steer`), which survives save, load, 4-bit quantisation and vLLM. A tied
head (Qwen2.5-3B) cannot carry one and stays as drawn: its steps run, with rewards that seldom
differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig, PretrainedConfig

from research_r1.data import prepare, write_split
from research_r1.protocol import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    FINAL_TURN_NOTICE,
    load_template,
    render_prompt,
)
from research_r1.retrieval import Passage
from research_r1.retrieval.bm25 import build_bm25_index
from research_r1.retrieval.corpus import load_corpus
from research_r1.tiny import build_tokenizer
from research_r1.world import build_world, write_corpus, write_questions

ARCHITECTURES = Path(__file__).resolve().parents[2] / "recipes" / "architectures"

# Keys that scale a step's cost and are reduced with the model (all other keys stay as shipped):
# fewer micro-batches per step, shorter turns and completions, a context the small world fits.
# gradient_accumulation_steps becomes the recipe's num_generations: one micro-batch per rollout of
# a prompt, the fewest that keep a step's completions a whole number of groups on any process count.
SHAPE: dict[str, Any] = {
    "max_new_tokens_per_turn": 24,
    "max_observation_tokens": 64,
    "max_completion_length": 192,
    "rollout_batch_size": 16,
    "save_steps": 1,
    "logging_steps": 1,
    "report_to": "none",
}
# The device and precision flags `research-r1 train` needs to run a GPU recipe on a CPU: the
# recipe's training on the CPU in float32 (AVX2 hosts have no bf16 arithmetic: emulated bf16 made
# a step ten times slower), and accelerate's mixed precision off (the recipes' accelerate configs
# ask for bf16).
CPU_FLAGS = [
    *("--use_cpu", "true", "--bf16", "false", "--dtype", "float32"),  # recipe keys
    *("--mixed_precision", "no"),  # accelerate's
]
# Logit bonuses (see `steer`) on the answer tags, the answer, the search tags and EOS: measured to
# make 5 of 8 groups of 5 episodes differ in exact match at the first step (1 in 8 with all at 5).
TAG_PUSH, ANSWER_PUSH, SEARCH_PUSH, EOS_PUSH = 7.0, 7.0, 2.0, 2.0
CITY_KINDS = ("born", "mentor_born")


@dataclass(frozen=True)
class Reduced:
    """What `reduce_recipe` wrote, and the recipe overrides that point at it."""

    recipe: Path
    shipped: dict[str, Any]  # the recipe's keys as written
    model: Path
    data: Path
    retriever: Path
    questions: Path
    output_dir: Path

    def overrides(self, max_steps: int = 2, **keys: Any) -> list[str]:
        """`--key value` pairs for `research-r1 train RECIPE ...`: the model, data, retriever,
        step count and `SHAPE`, then `keys` (device flags, Hub targets, ...)."""
        values: dict[str, Any] = {
            "model_name_or_path": self.model,
            "dataset_name": self.data,
            "retriever": self.retriever,
            "output_dir": self.output_dir,
            "max_steps": max_steps,
            "gradient_accumulation_steps": self.shipped.get("num_generations", 8),
            **SHAPE,
        }
        if self.shipped.get("eval_suite") is not None:
            values |= {
                "eval_datasets": f"world={self.questions}",
                "eval_limit": 4,
                "eval_retriever": self.retriever,
            }
        values |= keys
        argv: list[str] = []
        for key, value in values.items():
            argv += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
        return argv


def reduce_recipe(
    recipe: str | Path,
    out: str | Path,
    *,
    layers: int = 2,
    head_dim: int = 64,
    architectures: Path = ARCHITECTURES,
    seed: int = 0,
) -> Reduced:
    """Write the reduced model, the world's data, corpus, BM25 index and retriever config for
    `recipe` under `out`."""
    recipe, out = Path(recipe), Path(out)
    shipped = read_recipe(recipe)
    template = load_template(shipped.get("template", "search_r1"))
    world = build_world(seed, num_people=24, num_cities=1, num_test_questions=8)
    # Questions whose answer is the world's one city, so a steered random model answers right
    # often enough for a group's rewards to differ.
    world.train[:] = [q for q in world.train if q.kind in CITY_KINDS]
    world.test[:] = [q for q in world.test if q.kind in CITY_KINDS]

    corpus = write_corpus(world, out / "corpus.jsonl")
    index = build_bm25_index(load_corpus(corpus), out / "bm25", corpus_uri=str(corpus))
    retriever = out / "retriever.yaml"
    retriever.write_text(
        yaml.safe_dump({"type": "bm25", "corpus": str(corpus), "index": str(index)})
    )
    questions = {}
    for split, rows in (("train", world.train), ("test", world.test)):
        questions[split] = write_questions(rows, out / "questions" / f"{split}.jsonl")
        dataset, _ = prepare([f"world={questions[split]}"], split, template)
        write_split(dataset, out / "data", split)

    protocol = template.protocol
    texts = [render_prompt(template.prompt(q.question)) for q in world.train + world.test]
    texts += [protocol.observation([Passage(p["id"], p["contents"], 0.0)]) for p in world.passages]
    texts += [FINAL_TURN_NOTICE, *(n for n in (protocol.invalid_notice,) if n)]
    tokenizer = build_tokenizer(texts, protocol.tags, chat=template.chat)
    config = shrink(
        AutoConfig.from_pretrained(architectures / shipped["model_name_or_path"]),
        layers=layers,
        head_dim=head_dim,
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    answers = sorted({q.answer for q in world.train + world.test})
    pushes = {tag: TAG_PUSH for tag in (ANSWER_OPEN, ANSWER_CLOSE)}
    pushes |= {protocol.search_open: SEARCH_PUSH, protocol.search_close: SEARCH_PUSH}
    pushes |= {f" {answer}": ANSWER_PUSH for answer in answers}
    if not config.tie_word_embeddings:
        pushes_by_id = {_single_id(tokenizer, text): push for text, push in pushes.items()}
        steer(model, {**pushes_by_id, tokenizer.eos_token_id: EOS_PUSH})
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model_dir = out / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return Reduced(
        recipe=recipe,
        shipped=shipped,
        model=model_dir,
        data=out / "data",
        retriever=retriever,
        questions=questions["test"],
        output_dir=out / "run",
    )


def shrink(
    config: PretrainedConfig,
    *,
    layers: int,
    head_dim: int,
    vocab_size: int,
    eos_token_id: int,
    pad_token_id: int,
) -> PretrainedConfig:
    """The architecture at a fraction of its size: `layers` blocks; as many query heads per
    key-value head as shipped, with one key-value head of `head_dim`; the intermediate/hidden
    ratio as shipped (rounded to a multiple of 64, which 4-bit blocks and vLLM's kernels like);
    the tiny tokenizer's vocabulary and special tokens."""
    ratio = config.num_attention_heads // config.num_key_value_heads
    hidden = ratio * head_dim
    mlp = config.intermediate_size / config.hidden_size
    keys = config.to_dict()
    keys.pop("layer_types", None)  # recomputed for the new depth
    keys |= {
        "num_hidden_layers": layers,
        "num_attention_heads": ratio,
        "num_key_value_heads": 1,
        "hidden_size": hidden,
        "head_dim": head_dim,
        "intermediate_size": max(64, round(hidden * mlp / 64) * 64),
        "vocab_size": vocab_size,
        "bos_token_id": None,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
    }
    if "max_window_layers" in keys:
        keys["max_window_layers"] = layers
    return config.__class__.from_dict(keys)


def steer(model: Any, pushes: dict[int, float]) -> None:
    """Add a fixed logit bonus to some tokens, in the weights, so it survives save, load,
    quantisation and vLLM (a Qwen2 head has no bias).

    Dimension 0 of every embedding becomes a constant no block writes to (row 0 of each output
    projection is zeroed), so after the final norm it is a near-constant feature, whose typical
    value is measured on random text; the head reads it only for the pushed tokens. A tied head is
    the embedding itself and cannot.
    """
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    if head.data_ptr() == embed.data_ptr():
        raise ValueError("steer: a tied head cannot carry a per-token bonus")
    with torch.no_grad():
        embed[:, 0] = 1.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0].zero_()
            layer.mlp.down_proj.weight[0].zero_()
        text = torch.randint(0, embed.shape[0], (4, 64), generator=torch.Generator().manual_seed(0))
        feature = model(text, output_hidden_states=True).hidden_states[-1][..., 0].mean()
        for token_id, push in pushes.items():
            head[token_id, 0] = push / feature


def _single_id(tokenizer: Any, text: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"{text!r} is not one token of the reduced tokenizer: {ids}")
    return ids[0]


def read_recipe(recipe: str | Path) -> dict[str, Any]:
    """The recipe's keys as written (parsing it into TrainingArguments would refuse bf16 on a
    machine without a GPU)."""
    return yaml.safe_load(Path(recipe).read_text()) or {}
