"""A --jobs child process of the search: loads the model and data once, then builds candidates."""

from __future__ import annotations

_DATA = {}


def start(opts) -> None:
    from edgeresnet.host.optimize.evaluate import load_search_data

    _DATA["opts"], _DATA["data"] = opts, load_search_data(opts)


def evaluate_candidate(cand, kept):
    from edgeresnet.host.optimize.evaluate import evaluate

    return evaluate(cand, _DATA["opts"], _DATA["data"], kept=kept)
