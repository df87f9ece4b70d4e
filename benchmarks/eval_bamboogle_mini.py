"""`research-r1 eval` end to end on real questions: Bamboogle (`../shared/data/bamboogle_mini`,
125 questions and the 1,818 Wikipedia passages that answer them) under the `search_r1` suite's
setting, played as Search-R1's own evaluation plays it (its family), for the three methods, with a
tiny random model.

    .venv/bin/python benchmarks/eval_bamboogle_mini.py [--output-dir outputs/eval-bamboogle-mini]
        [--limit N]

What it shows is the harness on the published setting, not a score: the model is random (its
tokenizer holds every word of the corpus and questions, so its text is words), prompted with
Search-R1's own template through its chat template, and scores what a random model scores. The
retriever is BM25 over the shipped passages instead of the suite's e5 index of wiki-18, which
needs a GPU and 60 GB; the results name the retriever they ran with. Everything else is
Search-R1's (research_r1/evaluation/families/search_r1.yaml): top-3, at most 4 searches then a
final turn, 500 new tokens per turn, observations cut to their first 500 tokens, the context kept
to its last 4,096, EM on the last of at least two answers of the prompt and response, decoded
greedily.

It prints each method's `results.md` and writes the run under `--output-dir` (traces per
question).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from research_r1 import cli, outputs
from research_r1.protocol import SEARCH_R1, SEARCH_R1_PROMPT
from research_r1.retrieval.bm25 import build_bm25_index
from research_r1.retrieval.corpus import load_corpus
from research_r1.tiny import build_tiny_model

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bamboogle_mini"
METHODS = ("agent", "rag", "direct")


def build(out: Path) -> tuple[Path, Path]:
    """The tiny model (its vocabulary: the corpus, the questions and the prompt) and a BM25
    retriever config over the corpus."""
    corpus_file, questions = DATA / "corpus.jsonl", DATA / "test.jsonl"
    texts = [json.loads(line)["contents"] for line in corpus_file.open()]
    texts += [json.loads(line)["question"] for line in questions.open()]
    texts.append(SEARCH_R1_PROMPT)
    model = build_tiny_model(out / "tiny-model", texts, SEARCH_R1.tags, chat=True, seed=0)
    index = build_bm25_index(load_corpus(corpus_file), out / "bm25", corpus_uri=str(corpus_file))
    retriever = out / "retriever.yaml"
    retriever.write_text(f"type: bm25\nindex: {index}\ncorpus: {corpus_file}\n")
    return model, retriever


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output-dir", type=Path, default=outputs.output_dir("eval-bamboogle-mini")
    )
    parser.add_argument("--limit", type=int, help="the first N questions only")
    args = parser.parse_args()
    model, retriever = build(args.output_dir)
    argv = [
        *("eval", str(model), "--suite", "search_r1", "--family", "search_r1"),
        *("--datasets", f"bamboogle={DATA / 'test.jsonl'}", "--retriever", str(retriever)),
        *("--method", ",".join(METHODS), "--batch-size", "64"),
        *("--output_dir", str(args.output_dir / "eval")),
        *(("--limit", str(args.limit)) if args.limit else ()),
    ]
    print("research-r1", " ".join(argv))
    raise SystemExit(cli.main(argv))


if __name__ == "__main__":
    main()
