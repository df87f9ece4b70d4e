"""The demo Space: a page where one asks a question and watches a search agent answer it.

Three names, three things:
- the package `research_r1.space`: `episode` (what the page shows of an episode, live or
  finished), `settings` (the Space's settings: `space_config.json` under the Space variables),
  `app` (the Gradio app) and `push` (staging and uploading the Space);
- the commands `research-r1 space` (`app.py`: run the app on this machine) and
  `research-r1 push-space` (`push.py`: upload it to a Hub Space);
- the folder `spaces/search_agent/`: the Space's own files, its entry point app.py among them,
  which imports this package from the copy `push-space` puts next to it.
"""
