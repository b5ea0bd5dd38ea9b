"""The ``edgetpu`` check: Coral Edge TPU mapping of an emitted model, and ``inspect``'s verdict.

The analysis itself lives in :mod:`edgeresnet.targets.edgetpu.analysis` (the
report, the cache), with the op table and rules in ``ops.py``, the cut in
``partition.py`` and the compiler run in ``compiler.py``; this module registers
it in the check registry.
"""

from __future__ import annotations

from edgeresnet.targets.checks import Verdict, register_check


def _run(graph, spec, path, out_dir) -> dict:
    from edgeresnet.targets.edgetpu.analysis import analyze_model

    d = analyze_model(path, out_dir=out_dir).to_dict()
    d.pop("ops", None)  # per-op verdicts are long; the summary and cut carry the answer
    d["blocking"] = False
    return d


def _verdict(ctx, target) -> Verdict:
    from edgeresnet.targets.edgetpu.analysis import analyze_edgetpu

    report = analyze_edgetpu(ctx.graph)
    return Verdict(report.ok, report.summary(), report.to_dict())


def _describe(details: dict) -> list[str]:
    if not details:
        return []
    lines = [f"edgetpu: {details.get('cut', '')}"]
    memory = parameter_memory(details)
    if memory:
        lines.append(f"edgetpu: {memory}")
    return lines + [f"edgetpu {i['severity']}: {i['message']}" for i in details.get("issues", [])]


def parameter_memory(details: dict) -> str:
    """The parameter memory the Edge TPU part needs, against the on-chip cache; "" when no op maps."""
    if not details.get("already_compiled") and not details.get("ops_mapped"):
        return ""
    what = "compiled code + parameters" if details.get("already_compiled") else "parameters"
    return (
        f"{what} ~{details.get('param_bytes', 0) / 1024:.1f} KiB "
        f"(on-chip parameter cache {details.get('cache_bytes', 0) / 2**20:.0f} MiB)"
    )


register_check("edgetpu", run=_run, verdict=_verdict, describe=_describe, accelerator=True)
