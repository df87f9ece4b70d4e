"""`research-r1 download MODEL[@REVISION]`: fill the Hub cache with what `eval MODEL` reads.

GPU nodes often have no network, and a 7B checkpoint or the 60 GB wiki-18 index should not be
fetched on GPU time anyway. This command runs on a machine that is online and sharing HF_HOME
with the GPU box, so that `HF_HUB_OFFLINE=1 research-r1 eval MODEL` then loads its model and
retriever from the cache alone:

    research-r1 download PeterJinGo/SearchR1-nq_hotpotqa_train-qwen2.5-7b-em-ppo --with-index

- The checkpoint: one snapshot of the revision (weights, config, tokenizer), without weights in
  formats that neither transformers nor vLLM loads, nor pickled `.bin` weights where the repo
  has safetensors. A local folder needs nothing.
- With `--with-index`, the retriever eval would use: `--retriever CFG`, else that of `--suite`,
  else of the model family's suite (resolved by eval's own `make_plan` from the options the two
  commands share, `ModelArguments`: `--template` or `--family` as eval takes them). Its index,
  corpus and dense encoder are fetched with the functions `load_retriever` calls (`resolve`,
  `resolve_index`, `corpus_uri`, `encoder_name`), so the same cache entries are read back; a
  split index is reassembled and the corpus converted to Arrow here, as `load_retriever` would
  do on first use.

Each request is retried by huggingface_hub itself (`http_backoff`: connection errors and HTTP
5xx, five times with backoff); a loop of ours around it only multiplied the wait and the log
lines before the one-line error when there is no network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, constants, snapshot_download
from rich.console import Console
from rich.table import Table
from tqdm.auto import tqdm

from research_r1.errors import InputError
from research_r1.evaluation import EvalArguments, ModelArguments, make_plan
from research_r1.evaluation.arguments import MODEL_HELP
from research_r1.hub import HubLocation, hub_errors, is_hub_uri, resolve
from research_r1.retrieval.config import (
    BM25Config,
    DenseConfig,
    HybridConfig,
    RemoteConfig,
    corpus_uri,
    encoder_name,
    parse_config,
)
from research_r1.retrieval.corpus import load_corpus, read_info
from research_r1.retrieval.dense import resolve_index

# Weights that neither transformers' PyTorch loader nor vLLM reads.
OTHER_FORMATS = (
    *("*.h5", "*.msgpack", "*.ot", "*.gguf", "*.tflite", "*.mlmodel", "*.onnx", "*.onnx_data"),
    *("onnx/*", "openvino/*", "coreml/*"),
)
# Pickled PyTorch weights: loaded only when a repo has no safetensors.
PICKLES = ("*.bin", "*.pt", "*.pth")


@dataclass(frozen=True)
class Fetched:
    """One thing now on disk: what it is, where it came from, where it lies."""

    item: str
    source: str
    path: Path


@dataclass(kw_only=True)
class DownloadArguments(ModelArguments):
    """Prefetch into the Hugging Face Hub cache what `research-r1 eval MODEL` reads: the
    checkpoint and, with --with-index, its retriever's index, corpus and encoder."""

    model: str = field(metadata={"positional": True, "help": MODEL_HELP})
    with_index: bool = field(
        default=False, metadata={"help": "also the retriever's index, corpus and encoder"}
    )


def run_download(args: DownloadArguments) -> int:
    if not args.with_index and (args.suite or args.retriever):
        raise InputError("--suite and --retriever choose the index to fetch: add --with-index")
    # Settle the retriever first, so bad input fails before a large download.
    retriever = eval_retriever(args) if args.with_index else None
    model, _, revision = args.model.partition("@")
    fetched = []
    if Path(model).is_dir():
        print(f"model {model}: a local folder, nothing to download")
    else:
        fetched.append(fetch_snapshot("model", model, revision or None))
    if retriever is not None:
        fetched += fetch_retriever(retriever)
    if fetched:
        show(fetched)
    return 0


def eval_retriever(args: DownloadArguments) -> Mapping[str, Any] | str:
    """The retriever config `eval` would use with the same options."""
    if args.retriever is not None:
        return args.retriever
    shared = {field.name: getattr(args, field.name) for field in fields(ModelArguments)}
    # A fixed backend: "auto" would import vLLM only to pick one.
    plan = make_plan(EvalArguments(**shared, backend="transformers"))
    if plan.retriever is None:
        raise InputError(f"--with-index: suite {plan.suite.name}: {plan.suite.needs}")
    return plan.retriever


def fetch_snapshot(item: str, repo_id: str, revision: str | None) -> Fetched:
    """A model repo's files at `revision` (see `skipped` for those left out)."""
    location = HubLocation(repo_id, "model", revision=revision)

    with hub_errors(location):
        files = HfApi().list_repo_files(repo_id, revision=revision)
        path = snapshot_download(repo_id, revision=revision, ignore_patterns=skipped(files))
    return Fetched(item, f"{repo_id}@{revision}" if revision else repo_id, Path(path))


def skipped(files: Sequence[str]) -> list[str]:
    """Patterns of a repo's files that eval never loads."""
    has_safetensors = any(name.endswith(".safetensors") for name in files)
    return [*OTHER_FORMATS, *(PICKLES if has_safetensors else ())]


def fetch_retriever(config: Mapping[str, Any] | str) -> list[Fetched]:
    """Everything `load_retriever(config)` reads, fetched through the same functions."""
    fetched = []
    if is_hub_uri(config):
        fetched.append(Fetched("retriever config", str(config), resolve(str(config))))
    parsed = parse_config(config)
    if isinstance(parsed, RemoteConfig):
        print(f"retriever {parsed.url}: served remotely, nothing to download")
    elif isinstance(parsed, BM25Config):
        fetched += _bm25(parsed, None)
    elif isinstance(parsed, DenseConfig):
        fetched += _dense(parsed, None)
    else:
        assert isinstance(parsed, HybridConfig)
        fetched += _bm25(parsed.bm25, parsed.corpus) + _dense(parsed.dense, parsed.corpus)
    return fetched


def _bm25(config: BM25Config, default_corpus: str | None) -> list[Fetched]:
    index = resolve(config.index)
    corpus = _corpus(config.corpus or default_corpus, read_info(index), config.index)
    return [Fetched("BM25 index", config.index, index), *corpus]


def _dense(config: DenseConfig, default_corpus: str | None) -> list[Fetched]:
    path, info = resolve_index(config.index)
    encoder = encoder_name(config, info)
    corpus = _corpus(config.corpus or default_corpus, info, config.index)
    if Path(encoder).exists():
        model = Fetched("encoder", encoder, Path(encoder))
    else:
        model = fetch_snapshot("encoder", encoder, None)
    return [Fetched("dense index", config.index, path), *corpus, model]


def _corpus(uri: str | None, info: Mapping[str, Any], index: str) -> list[Fetched]:
    """The corpus source, and the Arrow file it is converted to (what searches read)."""
    uri = corpus_uri(uri, info, index)
    source = resolve(uri)
    arrow = load_corpus(uri).path
    converted = [Fetched("corpus, as Arrow", uri, arrow)] if arrow != source else []
    return [Fetched("corpus", uri, source), *converted]


def show(fetched: Sequence[Fetched]) -> None:
    """What is on disk now, and where, as a table (each item once)."""
    table = Table(title=f"Hub cache: {constants.HF_HUB_CACHE}")
    for column in ("item", "from", "local path", "size"):
        table.add_column(column, overflow="fold")
    for entry in dict.fromkeys(fetched):
        size = tqdm.format_sizeof(_size(entry.path), "B")
        table.add_row(entry.item, entry.source, str(entry.path), size)
    Console().print(table)


def _size(path: Path) -> int:
    """Bytes of a file, or of every file under a folder (through the cache's symlinks)."""
    if path.is_file():
        return path.stat().st_size
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
