"""A tiny random Qwen2 model and a word-level tokenizer, built locally for tests and demos.

Nothing is downloaded: the tokenizer is trained with `tokenizers` on the texts it will see and the
model starts from random weights, so the pair loads with `from_pretrained` (transformers, TRL,
vLLM) on a machine without network.

The tokenizer is a byte-level BPE trained to convergence, which makes it word-level on its
training texts (every word, with its leading space, is one token) and lossless on anything else
(unseen words fall back to bytes), so decoded transcripts compare exactly with the text they
came from. It has the very architecture of Qwen2's tokenizer because `AutoTokenizer` rebuilds
any `qwen2` checkpoint's tokenizer as `Qwen2Tokenizer` (byte-level BPE, Qwen's split pattern),
whatever `tokenizer.json` says; a different architecture would silently tokenise differently
after a save and load. Protocol tags are single NON-special tokens: TRL decodes completions with
`skip_special_tokens=True`, which would otherwise erase them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, trainers
from tokenizers import pre_tokenizers as pre
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

PAD, EOS = "<|pad|>", "<|endoftext|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")

# Used when `chat=True`: role markers are special tokens, so they never reach reward functions.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tokenizer(texts: Iterable[str], protocol_tags: Sequence[str], *, chat: bool = False):
    """A tokenizer whose vocabulary holds every word of `texts` as one token, plus the tags."""
    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre.Sequence(
        [
            pre.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1_000_000,  # never reached: merging goes on until every word is one token
        special_tokens=[EOS, PAD, *(ROLE_TOKENS if chat else ())],
        initial_alphabet=pre.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    backend.add_tokens([AddedToken(tag, special=False, normalized=False) for tag in protocol_tags])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE if chat else None,
        clean_up_tokenization_spaces=False,
    )


def build_tiny_model(
    out_dir: str | Path,
    texts: Iterable[str],
    protocol_tags: Sequence[str],
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    head_dim: int = 64,
    seed: int = 0,
    chat: bool = False,
) -> Path:
    """Save a random `Qwen2ForCausalLM` and its tokenizer to `out_dir`; returns the directory.

    Pass every text the model will read or write (prompts, passages, notices) as `texts` so its
    words are single tokens. Heads are `head_dim` wide (64 by default: vLLM's CPU attention
    kernel refuses narrow heads), so `hidden_size` must be a multiple of it. Embeddings are tied
    to keep the model small. `chat=True` adds a minimal chat template with special role tokens.
    """
    if hidden_size % head_dim:
        raise ValueError(f"hidden_size {hidden_size} is not a multiple of head_dim {head_dim}")
    out = Path(out_dir)
    tokenizer = build_tokenizer(texts, protocol_tags, chat=chat)
    heads = hidden_size // head_dim
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
