"""`research-r1 train RECIPE --dry-run` (research_r1.training.dry_run): the resolved recipe with
each key's source, secrets hidden, the Hub files a run fetches (against the loopback Hub), and
the shipped recipes' verdicts; a bad `--gpu-memory` is one line."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from helpers import ROOT
from huggingface_hub import HfApi, constants

from research_r1.cli import main as cli_main
from research_r1.training import launch
from research_r1.training.configs import parse_recipe
from research_r1.training.dry_run import parsed_as_on_gpu, size

GPU_RECIPES = [
    "recipes/qwen7b_grpo.yaml",
    "recipes/qwen7b_qlora_grpo.yaml",
    "recipes/qwen3b_grpo.yaml",
    "recipes/research_qwen7b_grpo.yaml",
]


ROW = re.compile(r"^│ (\w+) +│ (recipe|flag|default) +│", re.MULTILINE)


pytestmark = pytest.mark.usefixtures("in_repo", "wide_tables")


@pytest.fixture
def no_launch(monkeypatch) -> list:
    launched: list = []
    monkeypatch.setattr(launch, "launch_command", launched.append)
    yield launched
    assert launched == []


def dry_run(capsys, *argv: str) -> str:
    assert cli_main(["train", *argv, "--dry-run"]) == 0
    return capsys.readouterr().out


def verdict(out: str) -> str:
    (line,) = re.findall(r"^verdict: .*$", out, re.MULTILINE)
    return line


def test_a_bad_gpu_memory_is_one_line_naming_the_flag(capsys, no_launch):
    for argv in (["--dry-run", "--gpu-memory", "lots"], ["--gpu-memory=0GB", "--dry-run"]):
        assert cli_main(["train", "recipes/qwen7b_grpo.yaml", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --gpu-memory: ") and err.count("\n") == 1
    assert cli_main(["train", "recipes/qwen7b_grpo.yaml", "--gpu-memory", "24GiB"]) == 2
    assert capsys.readouterr().err == "error: --gpu-memory: only read with --dry-run\n"


@pytest.mark.parametrize("recipe", GPU_RECIPES)
def test_every_key_is_shown_with_its_source(recipe, capsys, no_launch):
    out = dry_run(capsys, recipe, "--max_steps", "3", "--lora-dropout", "0.1")

    with parsed_as_on_gpu():
        parsed = parse_recipe([recipe])
    keys = [field.name for part in parsed for field in fields(part) if field.init]
    in_recipe = set(yaml.safe_load(Path(recipe).read_text()))
    expected = {key: "recipe" if key in in_recipe else "default" for key in keys}
    expected.update(max_steps="flag", lora_dropout="flag")
    shown = dict(ROW.findall(out))
    assert shown == expected and len(shown) == len(keys)
    assert re.search(r"^│ learning_rate +│ recipe +│ [\d.e-]+ +│$", out, re.MULTILINE)
    assert re.search(r"^│ max_steps +│ flag +│ 3 +│$", out, re.MULTILINE)
    assert re.search(r"^│ num_train_epochs +│ default +│ 3.0 +│$", out, re.MULTILINE)
    assert "verdict: " in out


def test_secrets_are_hidden(capsys, no_launch):
    out = dry_run(capsys, "recipes/qwen3b_grpo.yaml", "--hub_token", "hf_SecretValue123")
    assert "hf_SecretValue123" not in out
    assert re.search(r"^│ hub_token +│ flag +│ \*\*\* \(hidden\) +│$", out, re.MULTILINE)


def test_the_files_it_fetches_come_from_the_hub_with_their_sizes(hub, tmp_path, capsys, no_launch):
    """A repo named as the recipe's model, with its config, a weights shard, a tokenizer file
    and what the run does not fetch (a pickled twin of the weights, the README)."""
    repo = "Qwen/Qwen2.5-7B"
    folder = tmp_path / "repo"
    folder.mkdir()
    config = ROOT / "recipes/architectures" / repo / "config.json"
    (folder / "config.json").write_bytes(config.read_bytes())
    (folder / "model-00001-of-00001.safetensors").write_bytes(b"\1" * 3000)
    (folder / "tokenizer.json").write_text('{"version": "1.0"}')
    (folder / "pytorch_model.bin").write_bytes(b"\2" * 5000)
    (folder / "README.md").write_text("# Qwen2.5-7B\n")
    api = HfApi(token=hub.token)
    api.create_repo(repo, exist_ok=True)
    api.upload_folder(folder_path=folder, repo_id=repo)

    out = dry_run(capsys, "recipes/qwen7b_grpo.yaml")
    assert "model hf://Qwen/Qwen2.5-7B@main: fetched from the Hub" in out
    files = dict(re.findall(r"^│ (\S+) +│ +([\d.]+ \w+) │$", out, re.MULTILINE))
    assert files == {
        "config.json": size(config.stat().st_size),
        "model-00001-of-00001.safetensors": "2.93 KiB",
        "tokenizer.json": "18 B",
    }
    total = size(config.stat().st_size + 3000 + 18)
    assert re.search(rf"^│ 3 files +│ +{total} │$", out, re.MULTILINE)
    assert "and 3 other files in the repo, not fetched" in out  # .gitattributes, README, .bin
    assert "model config: Qwen/Qwen2.5-7B (Hub)" in out
    assert "dataset outputs/data/nq_hotpotqa: local, nothing fetched" in out

    # A Hub dataset: every file datasets reads (the card for its configs, the data files).
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.parquet").write_bytes(b"\3" * 2048)
    (data / "README.md").write_text("---\nconfigs: []\n---\n")
    dataset = hub.new_repo_id("nq_hotpotqa")
    api.create_repo(dataset, repo_type="dataset")
    api.upload_folder(folder_path=data, repo_id=dataset, repo_type="dataset")
    out = dry_run(capsys, "recipes/qwen7b_grpo.yaml", "--dataset_name", f"hf://datasets/{dataset}")
    assert f"dataset hf://datasets/{dataset}: fetched from the Hub" in out
    files = dict(re.findall(r"^│ (\S+) +│ +([\d.]+ \w+) │$", out, re.MULTILINE))
    assert (files["train.parquet"], files["README.md"]) == ("2.00 KiB", "20 B")
    assert re.search(r"^│ 2 files +│ +2.02 KiB │$", out, re.MULTILINE)


def test_offline_the_listing_is_one_line_and_the_rest_is_printed(hub, capsys, no_launch):
    before = list(hub.requests)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "HF_HUB_OFFLINE", True)
        out = dry_run(capsys, "recipes/qwen3b_grpo.yaml")
    assert list(hub.requests) == before
    (listing,) = [line for line in out.splitlines() if "could not list" in line]
    assert listing.startswith("model hf://Qwen/Qwen2.5-3B@main: could not list its files (offline")
    assert "Traceback" not in out
    assert re.search(r"^│ learning_rate +│ recipe +│", out, re.MULTILINE)
    assert "model config: recipes/architectures/Qwen/Qwen2.5-3B/config.json" in out
    assert verdict(out).startswith("verdict: fits: ")


def test_qwen7b_fits_80gib_not_24gib(capsys, no_launch):
    at_80 = verdict(dry_run(capsys, "recipes/qwen7b_grpo.yaml"))
    at_24 = verdict(dry_run(capsys, "recipes/qwen7b_grpo.yaml", "--gpu-memory", "24GiB"))
    assert at_80.startswith("verdict: fits: ") and " of 80.00 GiB, " in at_80
    assert at_24.startswith("verdict: does not fit: ") and "over 24.00 GiB" in at_24
    assert "vLLM's share cannot hold its weights" in at_24  # 0.35 x 24 GiB < 14.19 GiB


def test_the_qlora_recipe_fits_24gib(capsys, no_launch):
    out = dry_run(capsys, "recipes/qwen7b_qlora_grpo.yaml", "--gpu-memory", "24GB")
    assert verdict(out).startswith("verdict: fits: ")
    assert "4 bits (nested absmax)" in out and "KV cache (generation)" in out
