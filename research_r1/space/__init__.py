"""The demo Space: the Gradio app (`app`, also `research-r1 space`) and `push-space`, which
uploads it with this package to a Hub Space (`spaces/search_agent/` is the Space's own folder)."""
