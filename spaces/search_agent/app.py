"""Watch a research_r1 search agent work: ask a question, see each thought, each search with the
passages it read, and the final answer, as they happen. This is the Space's entry point: it runs
the app of the package copy beside it (`research_r1/space/app.py`, copied by `push-space`).

Settings come from the Space variables MODEL_ID, RETRIEVER_CONFIG, TEMPLATE, MAX_TURNS, TOPK,
RESULTS and EXAMPLES, over the values `research-r1 push-space` wrote to space_config.json.
"""

from pathlib import Path

from research_r1.space.app import QUEUE_SIZE, load_space
from research_r1.space.settings import load_settings

if __name__ == "__main__":
    load_space(load_settings(Path(__file__).resolve().parent)).queue(max_size=QUEUE_SIZE).launch()
