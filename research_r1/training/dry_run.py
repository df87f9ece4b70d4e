"""`research-r1 train RECIPE --dry-run [--gpu-memory 24GiB]`: know before you launch.

Nothing is loaded or launched. Printed, in order:
1. the recipe as the parser resolved it: every key of its three dataclasses, with its value and
   where it came from (`recipe`, `flag` for a command-line override, or `default`); secrets
   hidden;
2. what the run will fetch from the Hub, with sizes where the Hub gives them: the model's
   weights, tokenizer and config, and a Hub dataset's files (local paths fetch nothing); a repo
   that cannot be listed (offline, unknown) gets one line saying why;
3. the memory one GPU will hold (`research_r1.training.memory`), from the model's config (its
folder, the
   Hub, or offline the copy in recipes/architectures) and the recipe's accelerate config, with a
   verdict against `--gpu-memory`.
"""

from __future__ import annotations

import argparse
import fnmatch
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from enum import Enum
from pathlib import Path
from typing import Any

import transformers.training_args
import yaml
from huggingface_hub import HfApi
from huggingface_hub.errors import HFValidationError
from huggingface_hub.hf_api import RepoSibling
from rich.console import Console
from rich.table import Table
from transformers import AutoConfig, PretrainedConfig
from trl import ModelConfig

from research_r1.errors import InputError
from research_r1.evaluation.download import PICKLES, skipped
from research_r1.hub import PUSH_ERRORS, HubLocation, hub_errors, is_hub_uri, parse_uri, scrub
from research_r1.training.configs import Recipe, SearchGRPOConfig, key_sources
from research_r1.training.launch import parse_launch
from research_r1.training.memory import (
    LINEARS,
    PROMPT_TOKENS,
    Architecture,
    Estimate,
    Setup,
    distribution,
    estimate,
    gib,
    parse_size,
    setup_for,
)
from research_r1.training.reduced import ARCHITECTURES

# What from_pretrained (model and tokenizer) and vLLM read from a model repo.
MODEL_FILES = (
    *("*.safetensors", "*.safetensors.index.json", *PICKLES, "*.bin.index.json"),
    *("config.json", "generation_config.json", "tokenizer*", "vocab.*", "merges.txt"),
    *("special_tokens_map.json", "added_tokens.json", "chat_template.*"),
)
HIDDEN = "*** (hidden)"


def dry_run(argv: list[str], gpu_memory: str, console: Console | None = None) -> None:
    """Print the resolved recipe, its Hub fetches and its memory estimate for `argv`
    (`RECIPE [--key value ...]`, accelerate flags included)."""
    try:
        gpu_bytes = parse_size(gpu_memory)
    except ValueError as error:
        raise InputError(f"--gpu-memory: {error}") from None
    with parsed_as_on_gpu():
        recipe, launch = parse_launch(argv)
    sources = key_sources(argv)
    console = console or Console(highlight=False)
    show_recipe(console, recipe, sources)
    listed = show_fetches(console, recipe)
    show_memory(console, recipe, launch, sources, gpu_bytes, hub=listed)


@contextmanager
def parsed_as_on_gpu() -> Iterator[None]:
    """Parse as on the GPU the estimate is for. TrainingArguments refuses `bf16: true` where it
    finds no bf16 GPU ("Your setup doesn't support bf16/gpu"), so a GPU recipe would not parse
    on the laptop where one checks it before launching: its probe says yes while the recipe is
    parsed, and only then (the launch still meets the real check)."""
    probe = transformers.training_args.is_torch_bf16_gpu_available
    transformers.training_args.is_torch_bf16_gpu_available = lambda: True
    try:
        yield
    finally:
        transformers.training_args.is_torch_bf16_gpu_available = probe


# ---------------------------------------------------------------------------------------------
# 1. The recipe


def show_recipe(console: Console, recipe: Recipe, sources: dict[str, str]) -> None:
    for part in recipe:
        table = Table(
            title=f"{type(part).__name__}: {len(fields(part))} keys", title_justify="left"
        )
        table.add_column("key", no_wrap=True)
        table.add_column("source", no_wrap=True)
        table.add_column("value", overflow="fold")
        for field in fields(part):
            if field.init:
                value = shown(field.name, getattr(part, field.name))
                table.add_row(field.name, sources.get(field.name, "default"), value)
        console.print(table)


def shown(key: str, value: Any) -> str:
    """A value as printed: a token (`hub_token`, any `*_token` key, as transformers masks them)
    hidden when set. Not `TrainingArguments.to_dict()`'s mask, which hides a token whether set or
    not: this table says which keys are set."""
    if value and key.endswith("_token"):
        return HIDDEN
    return str(value.value if isinstance(value, Enum) else value)


# ---------------------------------------------------------------------------------------------
# 2. What the run fetches


def show_fetches(console: Console, recipe: Recipe) -> bool:
    """Print the model's and the dataset's fetches; whether the model's Hub repo was listed."""
    script, _, model_args = recipe
    model = model_args.model_name_or_path
    listed = False
    if model is None or Path(model).exists():
        line(console, f"model {model}: local, nothing fetched")
    else:
        location = HubLocation(model, "model", revision=model_args.model_revision)
        listed = show_listing(console, "model", location)
    dataset = script.dataset_name
    if is_hub_uri(dataset):
        try:
            location = parse_uri(dataset)
        except InputError as error:
            line(console, f"dataset: {error}")
            return listed
        show_listing(console, "dataset", location)
    else:
        here = "" if dataset and Path(dataset).exists() else " (not there yet)"
        line(console, f"dataset {dataset}: local, nothing fetched{here}")
    return listed


def show_listing(console: Console, what: str, location: HubLocation) -> bool:
    """The repo's files the run reads, with sizes; one line when it cannot be listed. Whether
    it was listed."""
    try:
        with hub_errors(location):
            info = HfApi().repo_info(
                location.repo_id,
                repo_type=location.repo_type,
                revision=location.revision,
                files_metadata=True,
            )
    except (*PUSH_ERRORS, InputError, HFValidationError) as error:
        line(console, f"{what} {location.uri}: could not list its files ({scrub(str(error))})")
        return False
    siblings = list(info.siblings or [])
    read = fetched(siblings, location.repo_type)
    line(console, f"{what} {location.uri}: fetched from the Hub")
    table = Table()
    table.add_column("file", overflow="fold")
    table.add_column("size", justify="right", no_wrap=True)
    for sibling in read:
        table.add_row(sibling.rfilename, size(sibling.size))
    known = [sibling.size for sibling in read if sibling.size is not None]
    more = " (sizes unknown for some)" if len(known) < len(read) else ""
    table.add_row(f"{len(read)} files{more}", size(sum(known)), end_section=True)
    console.print(table)
    if len(read) < len(siblings):
        line(console, f"  and {len(siblings) - len(read)} other files in the repo, not fetched")
    return True


def fetched(siblings: Sequence[RepoSibling], repo_type: str) -> list[RepoSibling]:
    """The repo's files the run reads. A model's: those from_pretrained and vLLM read (no
    pickled weights where there are safetensors, as `research-r1 download` fetches). A
    dataset's: all but .gitattributes (datasets reads the card, then the config's data files)."""
    if repo_type == "dataset":
        return [sibling for sibling in siblings if sibling.rfilename != ".gitattributes"]
    names = [sibling.rfilename for sibling in siblings]
    left_out = skipped(names)
    return [
        sibling
        for sibling in siblings
        if _matches(sibling.rfilename, MODEL_FILES) and not _matches(sibling.rfilename, left_out)
    ]


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def size(value: int | None) -> str:
    """Bytes in the largest binary unit under 1024 of them."""
    if value is None:
        return "?"
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    exponent = 0
    while exponent < len(units) - 1 and value >= 1024 ** (exponent + 1):
        exponent += 1
    return f"{value} B" if exponent == 0 else f"{value / 1024**exponent:.2f} {units[exponent]}"


# ---------------------------------------------------------------------------------------------
# 3. Memory


def show_memory(
    console: Console,
    recipe: Recipe,
    launch: argparse.Namespace,
    sources: dict[str, str],
    gpu_bytes: int,
    hub: bool,
) -> None:
    """The estimate's table and verdict; the model's config from the Hub only when its repo was
    listed (else from the cache or recipes/architectures, without the download's retries)."""
    _, args, model_args = recipe
    try:
        config, where = model_config(model_args, args, hub)
        arch = Architecture.from_config(config)
    except InputError as error:
        line(console, f"memory: no estimate ({error})")
        return
    accelerate = yaml.safe_load(Path(launch.config_file).read_text()) if launch.config_file else {}
    processes, sharding = distribution(accelerate, launch.num_processes)
    batch_set = "generation_batch_size" in sources
    setup = setup_for(args, model_args, arch, processes, sharding, batch_set)
    result = estimate(arch, setup, gpu_bytes)

    line(console, f"\nmemory per GPU, estimated for {gib(gpu_bytes)}; model config: {where}")
    launcher = launch.config_file or "no accelerate config"
    line(console, f"  processes: {processes}, {sharding} ({launcher})")
    line(console, f"  generation: {generation(setup, args)}")
    line(console, f"  longest episode: {episode(result, setup)}")
    if args.use_cpu:
        line(
            console,
            "  use_cpu: the run is on the CPU, where this is its RAM (estimated as on a GPU)",
        )
    table = Table()
    table.add_column("item", no_wrap=True)
    table.add_column("when", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("how", overflow="fold")
    for item in result.items:
        table.add_row(item.name, item.phase, gib(item.bytes), item.how)
    table.add_row(
        "total",
        "peak",
        gib(result.total),
        "held + the larger of training and generation",
        end_section=True,
    )
    table.add_row("headroom", "", gib(result.headroom), f"of {gib(gpu_bytes)}")
    console.print(table)
    line(console, f"verdict: {result.verdict()}")
    if result.kv_room is not None:
        line(console, f"rollouts: {kv_cache(result)}")
    for note in uncounted(model_args):
        line(console, f"not counted: {note}")
    line(
        console,
        "(estimates from formulas, see research_r1/training/memory.py; the CUDA context, "
        "workspaces and fragmentation, often 1-2 GiB, are not counted)",
    )


def model_config(
    model_args: ModelConfig, args: SearchGRPOConfig, hub: bool
) -> tuple[PretrainedConfig, str]:
    """The model's config from its folder, the Hub (`hub`) or the Hub cache, else the copy of
    the shipped recipes' models in recipes/architectures; and which was read."""
    name = model_args.model_name_or_path
    local = Path(str(name)).is_dir()
    try:
        config = AutoConfig.from_pretrained(
            name,
            revision=model_args.model_revision,
            trust_remote_code=args.trust_remote_code,
            local_files_only=not (hub or local),
        )
    except (OSError, ValueError) as error:
        reason = scrub(str(error).strip().splitlines()[0])
        kept = ARCHITECTURES / str(name) / "config.json"
        if not kept.is_file():
            raise InputError(
                f"model_name_or_path: cannot read the config of {name}: {reason}"
            ) from None
        return AutoConfig.from_pretrained(kept.parent), str(
            kept.relative_to(ARCHITECTURES.parents[1])
        )
    return config, f"{name} ({'local folder' if local else 'Hub' if hub else 'Hub cache'})"


def generation(setup: Setup, args: SearchGRPOConfig) -> str:
    per_process = setup.generation_sequences
    if setup.generation == "vllm-server":
        return "vLLM server, on its own GPUs (not estimated here)"
    if setup.generation == "vllm-colocate":
        text = f"vLLM colocated, {per_process} episodes per process at once"
        text += " (per_device_train_batch_size x steps_per_generation)"
        if setup.processes > 1:
            text += f"; {per_process * setup.processes} over {setup.processes} processes"
        return text
    rows = args.rollout_batch_size
    return f"transformers, {per_process} episodes at a time (rollout_batch_size {rows})"


def episode(result: Estimate, setup: Setup) -> str:
    text = f"{result.sequence} tokens (a prompt of at most {PROMPT_TOKENS} assumed"
    text += f" + max_completion_length {setup.completion_tokens}"
    if setup.context and result.sequence == setup.context:
        text += f", capped at vllm_max_model_length {setup.context}"
    return text + ")"


def kv_cache(result: Estimate) -> str:
    """Whether vLLM's room holds the KV cache of every episode a process generates at once."""
    needed = result.kv_sequence_bytes * result.kv_sequences
    text = (
        f"{result.kv_sequences} episodes x {result.sequence} tokens need {gib(needed)} of KV "
        f"cache at full length; vLLM's room after its weights is {gib(max(0, result.kv_room))}"
    )
    held = result.kv_held
    if held >= result.kv_sequences:
        return f"{text}: all fit"
    if held == 0:
        return f"{text}: not one fits, vLLM will not start"
    return f"{text}: {held} at once, vLLM queues the rest (slower, not out of memory)"


def uncounted(model_args: ModelConfig) -> list[str]:
    """What the recipe trains that the estimate leaves out."""
    notes = []
    targets = model_args.lora_target_modules
    names = [targets] if isinstance(targets, str) else list(targets or [])
    others = [name for name in names if name not in (*LINEARS, "all-linear")]
    if model_args.use_peft and others:
        notes.append(f"LoRA on {others} (only the blocks' linears are estimated)")
    for key in ("lora_modules_to_save", "lora_target_parameters"):
        if model_args.use_peft and getattr(model_args, key):
            notes.append(f"{key} {getattr(model_args, key)}")
    if model_args.use_peft and model_args.use_dora:
        notes.append("DoRA's magnitude vectors (small)")
    return notes


def line(console: Console, text: str) -> None:
    """One line, never wrapped, never read as markup."""
    console.print(text, markup=False, soft_wrap=True)
