"""Scoring an episode the way a family's own evaluation code scores it.

Families read the answer from different text (the completion, the decoded prompt and response, the
assistant part, the last turn), with different rules (first or last `<answer>`, at least two
matches, `\\boxed{}` variants, a `{...}` rule, a fallback string), and score it with different
metrics (exact match, substring match, three kinds of token F1, a bag-of-words cover) under two
normalisers. `Scoring` holds one family's choices as data; `METRICS` names every metric once,
with the normaliser it uses, so a name means the same computation in every results file and the
leaderboard only ranks a number against numbers of the same name.

Our training rewards (`research_r1.rewards`) keep their own normaliser (NFKC first); evaluation
scores with the upstream ones, which have no Unicode normalisation.
"""

from __future__ import annotations

import re
import string
import typing
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

from research_r1.errors import InputError
from research_r1.protocol import extract_boxed

Golds = str | Sequence[str]

# ---------------------------------------------------------------------------------------------
# Normalisers

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_SQUAD_PUNCTUATION = frozenset(string.punctuation)
# R1-Searcher replaces these characters with spaces rather than deleting them.
_R1_PUNCTUATION = frozenset(string.punctuation + "‘’´`")


def squad_normalize(text: str) -> str:
    """SQuAD's normaliser, as every family but R1-Searcher copies it: lower case, punctuation
    deleted, the words a/an/the removed, whitespace collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in _SQUAD_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def r1_searcher_normalize(text: str) -> str:
    """R1-Searcher's normaliser: "True"/"False" read as yes/no, `_` and punctuation become
    spaces (so "Stratford-upon-Avon" is "stratford upon avon"), then articles and whitespace."""
    text = {"True": "yes", "False": "no"}.get(text, text)
    text = "".join(" " if ch in _R1_PUNCTUATION else ch for ch in text.replace("_", " ").lower())
    return " ".join(_ARTICLES.sub(" ", text).split())


# ---------------------------------------------------------------------------------------------
# Metrics: (prediction, golds) -> score, the best over the golds


def _golds(golds: Golds) -> list[str]:
    """A bare string is one gold answer, as upstream treats it (not a list of characters)."""
    return [golds] if isinstance(golds, str) else list(golds)


def exact_match(prediction: str, golds: Golds) -> float:
    return float(any(squad_normalize(g) == squad_normalize(prediction) for g in _golds(golds)))


def substring_match(prediction: str, golds: Golds) -> float:
    """A normalised gold inside the normalised prediction (an empty one is inside anything)."""
    predicted = squad_normalize(prediction)
    return float(any(squad_normalize(g) in predicted for g in _golds(golds)))


def _f1(predicted: list[str], gold: list[str]) -> float:
    same = sum((Counter(predicted) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, golds: Golds) -> float:
    """SQuAD's token F1."""
    predicted = squad_normalize(prediction).split()
    return max((_f1(predicted, squad_normalize(g).split()) for g in _golds(golds)), default=0.0)


def flashrag_f1(prediction: str, golds: Golds) -> float:
    """FlashRAG's token F1: SQuAD's, except that when either side is yes, no or noanswer only an
    identical answer scores (1.0)."""
    predicted = squad_normalize(prediction)
    best = 0.0
    for gold in map(squad_normalize, _golds(golds)):
        if {predicted, gold} & {"yes", "no", "noanswer"} and predicted != gold:
            continue
        best = max(best, _f1(predicted.split(), gold.split()))
    return best


def set_f1(prediction: str, golds: Golds) -> float:
    """PiCA's F1: overlap of word SETS, precision over the prediction's word count and recall
    over the gold's."""
    words = squad_normalize(prediction).split()
    best = 0.0
    for gold in map(squad_normalize, _golds(golds)):
        gold_words = gold.split()
        same = len(set(words) & set(gold_words))
        if same:
            precision, recall = same / len(words), same / len(gold_words)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def r1_searcher_cover(prediction: str, golds: Golds) -> float:
    """R1-Searcher's `cover_em_1` (the paper's ACC_R): every word of a normalised gold is among
    the words of the normalised prediction, in any order."""
    words = set(r1_searcher_normalize(prediction).split())
    return float(any(set(r1_searcher_normalize(g).split()) <= words for g in _golds(golds)))


@dataclass(frozen=True)
class Metric:
    """A score by name: the function and what it computes, as results files describe it."""

    score: Callable[[str, Golds], float]
    description: str


METRICS: dict[str, Metric] = {
    "em": Metric(exact_match, "exact match, SQuAD normalisation, any gold"),
    "subem": Metric(substring_match, "a gold inside the prediction, SQuAD normalisation"),
    "f1": Metric(token_f1, "SQuAD token F1, best over the golds"),
    "f1_flashrag": Metric(flashrag_f1, "token F1 with FlashRAG's yes/no/noanswer rule"),
    "f1_set": Metric(set_f1, "PiCA's F1 over word sets"),
    "acc_r": Metric(r1_searcher_cover, "R1-Searcher's cover_em_1: gold words among the answer's"),
}
# Every run reports these beside its family's own, so any two runs share a metric.
COMPARISON_METRICS = ("em", "f1")


def score(metric: str, prediction: str | None, golds: Golds) -> float:
    """`metric` of one prediction; no prediction scores 0 under every metric."""
    if metric not in METRICS:
        raise InputError(f"unknown metric {metric!r}; known metrics: {', '.join(METRICS)}")
    return 0.0 if prediction is None else METRICS[metric].score(prediction, golds)


# ---------------------------------------------------------------------------------------------
# Reading the answer


class Scoring(BaseModel):
    """Where a family's evaluation reads the answer, how, and which metrics it reports.

    `text`: the completion (sampled and inserted text, decoded without special tokens), the
    response (its ids decoded with special tokens, the first `response_cap` of them), the
    decoded prompt and response (`pad_shifts_prompt`: veRL's reading of a prompt holding pad-id
    tokens, which loses as many from its start), the assistant part of that (after the last
    assistant header, stripped), or the last turn (only when the episode ended with an
    answer). `pattern` is matched against it; with fewer than `min_matches` matches there is no
    answer; `pick` chooses the match; `then` post-processes it: `strip`; `boxed` (the last
    balanced `\\boxed{}`); `research_boxed` (ReSearch's rule, which also reads `\\boxed
    answer$`); `brace` (what follows the last `{`, up to the next `}`); `none`. `must_end`
    (PiCA) scores nothing unless the answer closes the text; `cut_off` says what an episode
    whose last call ran out of tokens predicts; `no_answer` is the prediction when nothing was
    found (None scores 0).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    text: Literal["completion", "response", "prompt+response", "assistant", "last_turn"] = (
        "completion"
    )
    response_cap: int | None = Field(None, ge=1)
    pad_shifts_prompt: bool = False
    drop_notice: bool = False
    pattern: str = r"<answer>(.*?)</answer>"
    pick: Literal["first", "last"] = "last"
    min_matches: int = Field(1, ge=1)
    then: Literal["strip", "boxed", "research_boxed", "brace", "none"] = "strip"
    must_end: bool = False
    cut_off: Literal["extract", "empty"] = "extract"
    no_answer: str | None = None
    metrics: tuple[str, ...] = ("em", "f1", "subem")
    headline: str = "em"

    @field_validator("metrics")
    @classmethod
    def _known(cls, metrics: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; known: {', '.join(METRICS)}")
        return metrics

    def read(self, episode: Played, tokenizer: Any, invalid_notice: str | None) -> str | None:
        """The text the answer is read from (None: the episode gave no such text)."""
        if self.text == "last_turn":
            return episode.turns[-1] if episode.answered and episode.turns else None
        if self.text == "completion":
            text = episode.completion_text or tokenizer.decode(
                episode.completion_ids, skip_special_tokens=True
            )
            if self.drop_notice and invalid_notice:
                text = text.replace(invalid_notice.strip(), "")
            return text
        response = list(episode.completion_ids[: self.response_cap])
        if self.text == "response":
            return tokenizer.decode(response, skip_special_tokens=False)
        prompt = episode.prompt_ids
        if self.pad_shifts_prompt:  # veRL counts the prompt's non-pad ids, then takes its tail
            pad = tokenizer.pad_token_id
            kept = sum(token != pad for token in prompt)
            prompt = prompt[len(prompt) - kept :]
        text = tokenizer.decode([*prompt, *response], skip_special_tokens=False)
        if self.text == "assistant":
            for header, split in _ASSISTANT:
                if header in text:
                    text = text.split(split)[-1].strip()
        return text

    def predict(self, episode: Played, tokenizer: Any, invalid_notice: str | None) -> Answer:
        """The text read and the prediction found in it, as the family's code finds it."""
        text = self.read(episode, tokenizer, invalid_notice)
        if self.cut_off == "empty" and episode.finish == "length":
            return Answer(text, "")
        return Answer(text, self.extract(text))

    def extract(self, text: str | None) -> str | None:
        """The prediction in `text`, or `no_answer`."""
        if text is None:
            return self.no_answer
        matches = re.findall(self.pattern, text, re.DOTALL)
        if len(matches) < self.min_matches:
            return self.no_answer
        answer = matches[0] if self.pick == "first" else matches[-1]
        if self.must_end:
            *_, last = re.finditer(self.pattern, text, re.DOTALL)
            if text[last.end() :].strip():
                return self.no_answer
        found = _THEN[self.then](answer)
        return self.no_answer if found is None else found

    @property
    def reported(self) -> tuple[str, ...]:
        """The metrics a run reports: the family's own, then the comparison ones."""
        return tuple(dict.fromkeys([*self.metrics, *COMPARISON_METRICS]))

    def scores(self, prediction: str | None, golds: Golds) -> dict[str, float]:
        """Every reported metric of one prediction, by name."""
        return {name: score(name, prediction, golds) for name in self.reported}


class Played(typing.Protocol):
    """What scoring reads of an episode (`rollout.Episode`)."""

    prompt_ids: list[int]
    completion_ids: list[int]
    completion_text: str
    turns: list[str]
    answered: bool
    finish: str


class Answer(NamedTuple):
    """The text an answer was read from, and the prediction (None: no answer)."""

    text: str | None
    prediction: str | None


# PiCA's assistant part: after the last chat header of the assistant (Qwen's, then Llama's).
_ASSISTANT = (
    ("<|im_start|>assistant", "<|im_start|>assistant"),
    ("<|start_header_id|>assistant", "assistant<|end_header_id|>"),
)


def research_boxed(text: str) -> str | None:
    """ReSearch's `last_boxed_only_string` and `remove_boxed`: `\\boxed answer` (with a space)
    anywhere wins and runs to the first `$`; else the last `\\boxed{...}` (or `\\fbox{...}`),
    braces balanced, not stripped."""
    if "\\boxed " in text:
        return text.split("\\boxed ")[-1].split("$")[0]
    start = text.rfind("\\boxed")
    if start < 0:
        start = text.rfind("\\fbox")
        if start < 0:
            return None
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                boxed = text[start : i + 1]
                return boxed[len("\\boxed{") : -1] if boxed.startswith("\\boxed{") else None
    return None


def brace(text: str) -> str:
    """StepSearch's rule: what follows the last `{`, up to the next `}`, stripped."""
    text = text.strip()
    if "{" in text:
        text = text.rsplit("{", 1)[1]
        text = text.split("}", 1)[0] if "}" in text else text
    return text.strip()


_THEN: dict[str, Callable[[str], str | None]] = {
    "strip": str.strip,
    "boxed": extract_boxed,
    "research_boxed": research_boxed,
    "brace": brace,
    "none": lambda text: text,
}
