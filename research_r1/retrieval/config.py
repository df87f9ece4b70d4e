"""Retriever configs: one YAML file (or dict) says which search engine to build.

`serve-retriever --retriever`, `search --retriever` and training recipes all go through
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
cuda:N, auto, or several GPUs to split the index over: cuda:N,M,... or cuda:all (queries are
encoded on the first).

Each type is a pydantic model. Types are strict, so a YAML `retries: true` or `nprobe: "8"` is
an error rather than 1 or 8, and unknown keys are errors that name the key.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from research_r1.errors import InputError, closest, invalid
from research_r1.hub import resolve
from research_r1.retrieval import Retriever
from research_r1.retrieval.bm25 import BM25Retriever
from research_r1.retrieval.client import RemoteRetriever
from research_r1.retrieval.corpus import Corpus, load_corpus, read_info
from research_r1.retrieval.dense import (
    DenseRetriever,
    Encoder,
    listed_gpus,
    load_faiss_index,
    query_device,
    resolve_index,
    set_search_parameters,
)
from research_r1.retrieval.hybrid import HybridRetriever
from research_r1.retrieval.recall import read_report

logger = logging.getLogger(__name__)


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class BM25Config(_Config):
    index: str
    corpus: str | None = None


class DenseConfig(_Config):
    index: str
    corpus: str | None = None
    encoder: str | None = None
    query_prompt: str | None = None
    nprobe: int | None = Field(None, ge=1)
    ef_search: int | None = Field(None, ge=1)
    k_factor: int | None = Field(None, ge=1)
    device: str = "cpu"
    batch_size: int = Field(64, ge=1)
    max_length: int | None = Field(None, ge=1)  # query tokens the encoder reads
    fp16: bool = False  # half-precision encoder on a GPU (a CPU keeps float32)

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if device != "auto":
            listed_gpus(device)
        return device


class HybridConfig(_Config):
    bm25: BM25Config
    dense: DenseConfig
    corpus: str | None = None
    rrf_k: int = Field(60, ge=0)
    depth: int = Field(50, ge=1)


class RemoteConfig(_Config):
    url: str
    api: str = "search_r1"
    token: str | None = Field(None, repr=False)  # configs get logged; tokens must not
    token_env: str | None = None
    timeout_s: float = 30.0
    retries: int = 3

    @field_validator("token_env")
    @classmethod
    def _not_with_token(cls, token_env: str | None, info: ValidationInfo) -> str | None:
        if token_env is not None and info.data.get("token") is not None:
            raise ValueError("give key 'token' or key 'token_env', not both")
        return token_env


RetrieverConfig = BM25Config | DenseConfig | HybridConfig | RemoteConfig
# The `type` key picks the model, which checks the other keys. Not a pydantic discriminated
# union: that puts the type first in every error's key ('dense.nprobe' for a dense config's
# nprobe) and needs a `type` field, which a hybrid's sections must not take.
TYPES: dict[str, type[_Config]] = {
    "bm25": BM25Config,
    "dense": DenseConfig,
    "hybrid": HybridConfig,
    "remote": RemoteConfig,
}


def load_retriever(config: str | os.PathLike | Mapping[str, Any]) -> Retriever:
    """Build the retriever a config (YAML path, `hf://` URI or dict) describes."""
    return build_retriever(parse_config(config))


def parse_config(config: str | os.PathLike | Mapping[str, Any]) -> RetrieverConfig:
    """Validate a config without loading any index, corpus or model."""
    if isinstance(config, Mapping):
        return _parse(config, "retriever config")
    path = resolve(config)
    try:
        mapping = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise InputError(f"retriever config {path}: not valid YAML ({error})") from error
    return _parse(mapping, f"retriever config {path}")


def build_retriever(config: RetrieverConfig) -> Retriever:
    if isinstance(config, RemoteConfig):
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
    retrievers = [_bm25(config.bm25, config.corpus), _dense(config.dense, config.corpus)]
    return HybridRetriever(retrievers, rrf_k=config.rrf_k, depth=config.depth)


def _bm25(config: BM25Config, default_corpus: str | None) -> Retriever:
    index_dir = resolve(config.index)
    corpus = _corpus(config.corpus or default_corpus, read_info(index_dir), config.index)
    return BM25Retriever(corpus, index_dir)


def _dense(config: DenseConfig, default_corpus: str | None) -> Retriever:
    path, info = resolve_index(config.index)
    built_with = info.get("encoder")
    name = encoder_name(config, info)
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
        device=query_device(device),
        batch_size=config.batch_size,
        max_length=config.max_length,
        fp16=config.fp16,
    )
    index = load_faiss_index(path)
    set_search_parameters(index, config.nprobe, config.ef_search, config.k_factor)
    return DenseRetriever(corpus, index, encoder, device, path, read_report(path))


def _corpus(uri: str | None, info: Mapping[str, Any], index: str) -> Corpus:
    return load_corpus(corpus_uri(uri, info, index))


def corpus_uri(configured: str | None, info: Mapping[str, Any], index: str) -> str:
    """The corpus a retriever reads: the config's, else the one its index records."""
    uri = configured or info.get("corpus")
    if uri is None:
        raise InputError(f"key 'corpus' is required: index {index} records no corpus")
    return uri


def encoder_name(config: DenseConfig, info: Mapping[str, Any]) -> str:
    """The encoder a dense retriever embeds queries with: the config's, else the index's."""
    name = config.encoder or info.get("encoder")
    if name is None:
        raise InputError(f"key 'encoder' is required: index {config.index} records no encoder")
    return name


def _device(device: str) -> str:
    if device == "cpu":
        return device
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
    try:
        return TYPES[kind].model_validate({k: v for k, v in mapping.items() if k != "type"})
    except ValidationError as error:
        raise _invalid(error, where, kind) from error


def _invalid(error: ValidationError, where: str, kind: str) -> InputError:
    """`invalid`'s one line. An unknown key comes first, since it is often a typo that also
    leaves a key missing (`indx:` for `index:`), with the key it most likely meant and the keys
    allowed there."""
    errors = error.errors(include_url=False)
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    if not unknown:
        return invalid(error, where)
    model = TYPES[kind]
    for section in unknown[0]["loc"][:-1]:
        model = model.model_fields[section].annotation
    name = str(unknown[0]["loc"][-1])
    key = ".".join(map(str, unknown[0]["loc"]))
    allowed = ", ".join(model.model_fields)
    meant = closest(name, model.model_fields)
    hint = f"did you mean {meant!r}? " if meant else ""
    return InputError(f"{where}: unknown key {key!r} for type {kind} ({hint}allowed: {allowed})")
