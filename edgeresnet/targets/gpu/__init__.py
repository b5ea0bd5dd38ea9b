"""The ``gpu`` check: the mobile GPU delegate screen of an emitted model, and ``inspect``'s verdict.

The analysis itself (the TFLite analyzer when it still checks GPU support,
else edgeresnet's screen of known blockers) lives in :mod:`edgeresnet.targets.gpu.analysis`.
"""

from __future__ import annotations

from edgeresnet.targets.checks import Verdict, register_check


def _run(graph, spec, path, out_dir) -> dict:
    from edgeresnet.targets.gpu.analysis import analyze_gpu

    d = analyze_gpu(graph.data, isolate=False).to_dict()  # a model this run wrote and loaded
    d["blocking"] = False
    return d


def _verdict(ctx, target) -> Verdict:
    if ctx.graph.edgetpu_compiled:
        return Verdict(
            None,
            "not applicable: compiled for the Edge TPU (its edgetpu-custom-op runs only there); "
            "check the model from before edgetpu_compiler for the GPU",
            applies=False,
        )
    from edgeresnet.targets.gpu.analysis import analyze_gpu

    report = analyze_gpu(ctx.data, engine="auto" if ctx.gpu_analyzer else "none", graph=ctx.graph)
    return Verdict(report.ok, report.summary(), report.to_dict())


def _describe(details: dict) -> list[str]:
    return [f"gpu: {note}" for note in details.get("notes", [])]


register_check("gpu", run=_run, verdict=_verdict, describe=_describe, accelerator=True)
