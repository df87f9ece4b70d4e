"""Retriever configs: one YAML file (or dict) says which search engine to build.

`serve-retriever --config`, `search --config` and training recipes all go through
`load_retriever`. Keys per `type` (paths may be local or `hf://` URIs; `corpus` may be left out
when the index was made by `build-index`, which records its corpus):

    type: bm25     index, corpus
    type: dense    index, corpus, encoder, query_prompt, nprobe, ef_search, k_factor (re-rank
                   k_factor x k candidates exactly; for factories ending in ,RFlat), device,
                   batch_size
    type: hybrid   bm25: {...}, dense: {...} (sections as above, without type), corpus (shared
                   default for both sections), rrf_k (60), depth (50: candidates per retriever)
    type: remote   url, api (search_r1 | research), token or token_env (the name of an
                   environment variable holding it, to keep it out of the file), timeout_s, retries

A dense `index` is an index file, a `build-index` folder, or a folder of Search-R1's published
parts. `encoder` defaults to the one recorded with the index, and `query_prompt` to the one it
was built with (else the known prompt of the encoder's family). `device` is cpu (default), cuda,
cuda:N or auto. Unknown keys and wrong types are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from research_r1.errors import InputError
from research_r1.retrieval import Retriever

logger = logging.getLogger(__name__)

_DEVICE = re.compile(r"cpu|auto|cuda(:\d+)?")


@dataclass(frozen=True)
class BM25Config:
    index: str
    corpus: str | None = None


@dataclass(frozen=True)
class DenseConfig:
    index: str
    corpus: str | None = None
    encoder: str | None = None
    query_prompt: str | None = None
    nprobe: int | None = None
    ef_search: int | None = None
    k_factor: int | None = None
    device: str = "cpu"
    batch_size: int = 64

    def __post_init__(self) -> None:
        if not _DEVICE.fullmatch(self.device):
            raise InputError(f"key 'device' must be cpu, cuda, cuda:N or auto, got {self.device!r}")
        for name in ("nprobe", "ef_search", "k_factor", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"key {name!r} must be >= 1, got {value}")


@dataclass(frozen=True)
class HybridConfig:
    bm25: BM25Config
    dense: DenseConfig
    corpus: str | None = None
    rrf_k: int = 60
    depth: int = 50

    def __post_init__(self) -> None:
        if self.rrf_k < 0:
            raise InputError(f"key 'rrf_k' must be >= 0, got {self.rrf_k}")
        if self.depth < 1:
            raise InputError(f"key 'depth' must be >= 1, got {self.depth}")


@dataclass(frozen=True)
class RemoteConfig:
    url: str
    api: str = "search_r1"
    token: str | None = dataclasses.field(default=None, repr=False)
    token_env: str | None = None
    timeout_s: float = 30.0
    retries: int = 3

    def __post_init__(self) -> None:
        if self.token is not None and self.token_env is not None:
            raise InputError("give key 'token' or key 'token_env', not both")


RetrieverConfig = BM25Config | DenseConfig | HybridConfig | RemoteConfig
TYPES: dict[str, type] = {
    "bm25": BM25Config,
    "dense": DenseConfig,
    "hybrid": HybridConfig,
    "remote": RemoteConfig,
}


def load_retriever(config: str | os.PathLike | Mapping[str, Any]) -> Retriever:
    """Build the retriever a config (YAML path, `hf://` URI or dict) describes."""
    return build_retriever(parse_config(config))


def parse_config(config: str | os.PathLike | Mapping[str, Any]) -> RetrieverConfig:
    """Validate a config without loading anything heavy."""
    if isinstance(config, Mapping):
        return _parse(config, "retriever config")
    import yaml

    from research_r1.hub import resolve

    path = resolve(config)
    try:
        mapping = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise InputError(f"retriever config {path}: not valid YAML ({error})") from error
    return _parse(mapping, f"retriever config {path}")


def build_retriever(config: RetrieverConfig) -> Retriever:
    if isinstance(config, RemoteConfig):
        from research_r1.retrieval.client import RemoteRetriever

        token = config.token
        if config.token_env is not None:
            token = os.environ.get(config.token_env)
            if not token:
                raise InputError(
                    f"key 'token_env': environment variable {config.token_env} is unset"
                )
        return RemoteRetriever(
            config.url,
            api=config.api,
            token=token,
            timeout_s=config.timeout_s,
            retries=config.retries,
        )
    if isinstance(config, BM25Config):
        return _bm25(config, None)
    if isinstance(config, DenseConfig):
        return _dense(config, None)
    from research_r1.retrieval.hybrid import HybridRetriever

    retrievers = [_bm25(config.bm25, config.corpus), _dense(config.dense, config.corpus)]
    return HybridRetriever(retrievers, rrf_k=config.rrf_k, depth=config.depth)


def _bm25(config: BM25Config, default_corpus: str | None) -> Retriever:
    from research_r1.hub import resolve
    from research_r1.retrieval.bm25 import BM25Retriever
    from research_r1.retrieval.corpus import read_info

    index_dir = resolve(config.index)
    corpus = _corpus(config.corpus or default_corpus, read_info(index_dir), config.index)
    return BM25Retriever(corpus, index_dir)


def _dense(config: DenseConfig, default_corpus: str | None) -> Retriever:
    from research_r1.retrieval.dense import (
        DenseRetriever,
        Encoder,
        load_faiss_index,
        resolve_index,
        set_search_parameters,
    )

    path, info = resolve_index(config.index)
    built_with = info.get("encoder")
    name = config.encoder or built_with
    if name is None:
        raise InputError(f"key 'encoder' is required: index {config.index} records no encoder")
    if built_with is not None and name != built_with:
        logger.warning("index %s was built with encoder %s, not %s", config.index, built_with, name)
    query_prompt = config.query_prompt
    if query_prompt is None and name == built_with:
        query_prompt = info.get("query_prompt")
    corpus = _corpus(config.corpus or default_corpus, info, config.index)
    device = _device(config.device)
    encoder = Encoder(
        name,
        query_prompt=query_prompt,
        passage_prompt=info.get("passage_prompt"),
        device=device,
        batch_size=config.batch_size,
    )
    index = load_faiss_index(path)
    set_search_parameters(index, config.nprobe, config.ef_search, config.k_factor)
    return DenseRetriever(corpus, index, encoder, device)


def _corpus(uri: str | None, info: Mapping[str, Any], index: str) -> Any:
    from research_r1.retrieval.corpus import load_corpus

    uri = uri or info.get("corpus")
    if uri is None:
        raise InputError(f"key 'corpus' is required: index {index} records no corpus")
    return load_corpus(uri)


def _device(device: str) -> str:
    if device == "cpu":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda" if device == "auto" else device
    if device == "auto":
        return "cpu"
    raise InputError(f"key 'device' is {device!r} but torch sees no CUDA GPU")


def _parse(mapping: Any, where: str) -> RetrieverConfig:
    if not isinstance(mapping, Mapping):
        raise InputError(f"{where}: expected a mapping of keys, got {type(mapping).__name__}")
    kind = mapping.get("type")
    if kind not in TYPES:
        raise InputError(f"{where}: key 'type' must be one of {', '.join(TYPES)}, got {kind!r}")
    fields = {key: value for key, value in mapping.items() if key != "type"}
    return _build(TYPES[kind], fields, where, f"type {kind}")


def _build(cls: type, mapping: Mapping[str, Any], where: str, what: str) -> Any:
    """An instance of config dataclass `cls` from `mapping`, checking names and types."""
    fields = {field.name: field for field in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in mapping:
        if key not in fields:
            raise InputError(
                f"{where}: unknown key {key!r} for {what} (allowed: {', '.join(fields)})"
            )
    for name, field in fields.items():
        required = field.default is dataclasses.MISSING
        if required and name not in mapping:
            raise InputError(f"{where}: key {name!r} is required for {what}")
    values = {}
    for key, value in mapping.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, Mapping):
                raise InputError(f"{where}: key {key!r} must be a mapping of keys, got {value!r}")
            values[key] = _build(hint, value, f"{where}, section {key!r}", f"a {key} section")
        elif _matches(value, hint):
            values[key] = value
        else:
            raise InputError(f"{where}: key {key!r} must be {_describe(hint)}, got {value!r}")
    try:
        return cls(**values)
    except InputError as error:
        raise InputError(f"{where}: {error}") from error


def _matches(value: Any, hint: Any) -> bool:
    allowed = typing.get_args(hint) or (hint,)
    if isinstance(value, bool):
        return bool in allowed
    if isinstance(value, int) and float in allowed:
        return True
    return isinstance(value, allowed)


def _describe(hint: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", type(None): "null"}
    return " or ".join(names[kind] for kind in typing.get_args(hint) or (hint,))
