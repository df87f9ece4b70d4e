"""Answer scoring and the GRPO reward functions built on it.

Scoring follows Search-R1, FlashRAG and ReSearch so our numbers compare with theirs:

- `normalize_answer`: the SQuAD normalisation (lowercase, drop ASCII punctuation, drop the words
  a/an/the, collapse whitespace), applied after Unicode NFKC. NFKC folds compatibility forms
  (full-width letters and punctuation, ligatures, superscripts) and composes accents, so a
  decomposed "e + combining acute" equals the single letter "é". Accented letters stay letters:
  "Pelé" and "Pele" are different answers, as upstream scores them.
- `exact_match`, `cover_match` (FlashRAG's "acc": the gold appears inside the prediction) and
  `token_f1` (SQuAD token F1 with FlashRAG's yes/no/noanswer rule), each the best over the golds.

The reward functions use TRL's signature `f(prompts, completions, completion_ids, **columns)`,
read gold answers from the dataset column `golden_answers`, and parse the completion only, so the
example answer that the Search-R1 prompt contains can never count. The format checks they apply
are the protocol's (`protocol.follows_format`).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from research_r1.errors import InputError
from research_r1.protocol import RESEARCH, SEARCH_R1, extract_answer, follows_format

Golds = str | Sequence[str]
RewardFunc = Callable[..., list[float | None]]

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# FlashRAG and ReSearch give no partial F1 credit when either side is one of these.
_CLOSED_ANSWERS = ("yes", "no", "noanswer")

# ---------------------------------------------------------------------------------------------
# Scoring one prediction against its gold answers


def normalize_answer(text: str) -> str:
    """SQuAD normalisation after NFKC, in upstream's order (lower, punctuation, articles)."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _gold_list(golds: Golds) -> list[str]:
    """A bare string is one gold answer, as upstream treats it (not a list of characters)."""
    return [golds] if isinstance(golds, str) else list(golds)


def exact_match(prediction: str | None, golds: Golds) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer."""
    if prediction is None:
        return 0.0
    predicted = normalize_answer(prediction)
    return float(any(normalize_answer(gold) == predicted for gold in _gold_list(golds)))


def cover_match(prediction: str | None, golds: Golds) -> float:
    """1.0 if any normalised gold answer is a substring of the normalised prediction.

    A gold that normalises to nothing (e.g. "The") would be inside every prediction; it only
    covers an equally empty prediction, so it cannot hand out free points.
    """
    if prediction is None:
        return 0.0
    predicted = normalize_answer(prediction)
    for gold in _gold_list(golds):
        normalized = normalize_answer(gold)
        if normalized in predicted and (normalized or not predicted):
            return 1.0
    return 0.0


def token_f1(prediction: str | None, golds: Golds) -> float:
    """Best SQuAD token F1 over the golds; yes/no/noanswer score only by matching exactly."""
    if prediction is None:
        return 0.0
    predicted = normalize_answer(prediction)
    best = 0.0
    for gold in _gold_list(golds):
        normalized = normalize_answer(gold)
        if (predicted in _CLOSED_ANSWERS or normalized in _CLOSED_ANSWERS) and (
            predicted != normalized
        ):
            continue
        predicted_tokens, gold_tokens = predicted.split(), normalized.split()
        same = sum((Counter(predicted_tokens) & Counter(gold_tokens)).values())
        if same == 0:
            continue
        precision, recall = same / len(predicted_tokens), same / len(gold_tokens)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


# ---------------------------------------------------------------------------------------------
# Reward functions (TRL signature)


def completion_text(completion: str | list[dict[str, Any]]) -> str:
    """The generated text: TRL passes a string, or assistant messages for chat prompts."""
    if isinstance(completion, str):
        return completion
    return "".join(message.get("content") or "" for message in completion)


def _column(columns: dict[str, Any], name: str, reward: str, size: int) -> list[Any]:
    if name not in columns:
        raise InputError(f"reward {reward!r} needs the dataset column {name!r}")
    values = list(columns[name])
    if len(values) != size:
        raise InputError(
            f"reward {reward!r}: column {name!r} has {len(values)} rows for {size} completions"
        )
    return values


def _log_rate(columns: dict[str, Any], name: str, flags: list[bool]) -> None:
    """Report a rate to TRL's metrics (the trainer passes `log_metric`; direct calls do not)."""
    log_metric = columns.get("log_metric")
    if log_metric is not None and flags:
        log_metric(name, sum(flags) / len(flags))


def search_r1_em(
    prompts: list[Any], completions: list[Any], completion_ids: Any = None, **columns: Any
) -> list[float | None]:
    """Search-R1's EM reward: 1.0 if the completion's last `<answer>` matches a gold answer."""
    golds = _column(columns, "golden_answers", "search_r1_em", len(completions))
    return [
        exact_match(extract_answer(completion_text(c), SEARCH_R1), g)
        for c, g in zip(completions, golds, strict=True)
    ]


_INFORMATION = re.compile(
    re.escape(SEARCH_R1.observation_open) + "(.*?)" + re.escape(SEARCH_R1.observation_close),
    re.DOTALL,
)


def gold_in_information(text: str, golds: Golds) -> bool:
    """Whether a normalised gold answer appears inside one of the completion's `<information>`
    blocks (Search-R1's `is_retrieval_correct`: the search found the answer). A gold that
    normalises to nothing never counts, as in `cover_match`."""
    blocks = [normalize_answer(block) for block in _INFORMATION.findall(text)]
    normalized = [gold for gold in map(normalize_answer, _gold_list(golds)) if gold]
    return any(gold in block for block in blocks for gold in normalized)


def make_format_em_reward(
    correct_valid: float = 1.0,
    correct_invalid: float = 0.8,
    wrong_valid: float = 0.2,
    wrong_invalid: float = 0.1,
    retrieval: float = 0.0,
) -> RewardFunc:
    """Search-R1's format-aware EM reward with its values (defaults: upstream's).

    Correctness decides first, then following the grammar earns the higher value of the two. A
    wrong answer in a valid sequence whose searches brought back a gold answer (inside an
    `<information>` block) also earns `retrieval` (upstream's `retrieval_score`, 0 by default,
    added to `structure_format_score`). A completion with no answer gets 0 (a valid sequence
    always has one).
    """

    def search_r1_format_em(
        prompts: list[Any], completions: list[Any], completion_ids: Any = None, **columns: Any
    ) -> list[float | None]:
        golds = _column(columns, "golden_answers", "search_r1_format_em", len(completions))
        rewards: list[float | None] = []
        valid_flags = []
        for completion, gold in zip(completions, golds, strict=True):
            text = completion_text(completion)
            valid, _ = follows_format(text, SEARCH_R1)
            answer = extract_answer(text, SEARCH_R1)
            valid_flags.append(valid)
            if answer is None:
                rewards.append(0.0)
            elif exact_match(answer, gold):
                rewards.append(correct_valid if valid else correct_invalid)
            elif valid:
                bonus = retrieval if retrieval and gold_in_information(text, gold) else 0.0
                rewards.append(wrong_valid + bonus)
            else:
                rewards.append(wrong_invalid)
        _log_rate(columns, "search_r1_format_em/valid_format", valid_flags)
        return rewards

    return search_r1_format_em


search_r1_format_em = make_format_em_reward()


def research_f1(
    prompts: list[Any], completions: list[Any], completion_ids: Any = None, **columns: Any
) -> list[float | None]:
    """ReSearch's reward: token F1 of the `\\boxed{}` answer, 0.1 for a valid format with F1 0.

    0 when the format is invalid or the response was cut off; the rollout marks cut-off
    completions in the per-completion column `truncated` (absent: none was cut off).
    """
    golds = _column(columns, "golden_answers", "research_f1", len(completions))
    truncated = (
        _column(columns, "truncated", "research_f1", len(completions))
        if columns.get("truncated") is not None
        else [False] * len(completions)
    )
    rewards: list[float | None] = []
    valid_flags = []
    for completion, gold, cut in zip(completions, golds, truncated, strict=True):
        text = completion_text(completion)
        valid, _ = follows_format(text, RESEARCH)
        valid_flags.append(valid)
        answer = extract_answer(text, RESEARCH) if valid and not cut else None
        if answer is None:
            rewards.append(0.0)
        else:
            f1 = token_f1(answer, gold)
            rewards.append(f1 if f1 > 0 else 0.1)
    _log_rate(columns, "research_f1/valid_format", valid_flags)
    return rewards


REWARDS: dict[str, RewardFunc] = {
    "search_r1_em": search_r1_em,
    "search_r1_format_em": search_r1_format_em,
    "research_f1": research_f1,
}

# Rewards that take options, by name: the factory whose keyword arguments are the options.
_FACTORIES: dict[str, Callable[..., RewardFunc]] = {"search_r1_format_em": make_format_em_reward}


def get_reward(name: str, **options: Any) -> RewardFunc:
    """A reward function by registry name or import path (`pkg.module.function`, as TRL's GRPO
    script accepts), with `options`: a registry reward's options go to its factory (only
    search_r1_format_em has any); an imported function gets them as keyword arguments on every
    call, so it must accept them."""
    if "." in name:
        return _imported_reward(name, options)
    if name not in REWARDS:
        raise InputError(
            f"unknown reward {name!r}; known rewards: {', '.join(REWARDS)}, or an import path "
            "such as my_package.rewards.my_reward"
        )
    if not options:
        return REWARDS[name]
    accepted = set(inspect.signature(_FACTORIES[name]).parameters) if name in _FACTORIES else set()
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise InputError(
            f"reward {name!r} has no options {unknown}; its options: {sorted(accepted) or 'none'}"
        )
    return _FACTORIES[name](**options)


def _imported_reward(path: str, options: dict[str, Any]) -> RewardFunc:
    module_name, _, attribute = path.rpartition(".")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except ModuleNotFoundError as error:
        raise InputError(f"reward {path!r}: cannot import module {error.name!r}") from error
    except AttributeError as error:
        raise InputError(f"reward {path!r}: module {module_name!r} has no {attribute!r}") from error
    if not callable(function):
        raise InputError(f"reward {path!r} is not a function")
    if not options:
        return function
    # Options must be named parameters: every TRL reward takes **columns, which would swallow a
    # misspelt option without a word.
    accepted = {
        parameter.name
        for parameter in inspect.signature(function).parameters.values()
        if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    } - {"prompts", "completions", "completion_ids"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise InputError(
            f"reward {path!r} takes no options {unknown}; its options: {sorted(accepted) or 'none'}"
        )
    return functools.update_wrapper(functools.partial(function, **options), function)
