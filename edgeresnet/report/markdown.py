"""``report.md`` and the variants table the CLI prints, from a ``report.json`` dict."""

from __future__ import annotations

from typing import Optional

from edgeresnet.host import device_check

def as_number(v) -> Optional[float]:
    """``v`` as a float, or None for None, booleans and what is not a number."""
    if v is None or isinstance(v, bool):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def fmt_number(v, spec: str = ".2f") -> str:
    """A number in ``spec``, or an en dash when there is none (the one formatter of md, html and csv)."""
    n = as_number(v)
    return "–" if n is None else format(n, spec)


def fmt_drop(v: dict, drop_key: str = "drop_pts", margin_key: str = "drop_margin_pts") -> str:
    """A record's drop in points with its 95 % margin (``0.30 ± 0.41``; the drop alone when no margin was
    recorded), or an en dash when there is none."""
    drop, margin = fmt_number(v.get(drop_key)), as_number(v.get(margin_key))
    return drop if margin is None or drop == "–" else f"{drop} ± {margin:.2f}"


def fmt_kib(n):
    """A byte count in KiB with one decimal, or an en dash when there is none."""
    return "–" if n is None else f"{n / 1024:.1f}"


def safe_mode_text(safe_mode) -> str:
    """How the report says whether the model file was loaded with the code checks on."""
    if safe_mode is None:
        return "not applicable (an in-memory model)"
    if safe_mode:
        return "yes (the file was checked for code before loading; none was found)"
    return "NO: --trust-model-code, the model's own code (Lambda layers, custom classes, graph ops) was allowed to run"


QAT_METHODS = ("qat", "pqat", "cqat", "pcqat")  # plain, sparsity-, cluster-, and both-preserving


def is_qat(variant: dict) -> bool:
    """Whether a variant's int8 ranges come from quantization-aware training (QAT, PQAT, CQAT or PCQAT)."""
    return (variant.get("fine_tune") or {}).get("method") in QAT_METHODS


def fine_tune_text(variant: dict) -> str:
    """How a variant's model was fine-tuned, short: ``prune 3 ep @0.0003 + PQAT 3 ep @0.0001 cosine``
    (``cluster 3 ep @0.0003`` for --cluster N), or ``–``."""

    def one(ft: dict) -> str:
        what = {"prune": "prune", **{m: m.upper() for m in QAT_METHODS}}.get(ft.get("method"), str(ft.get("method")))
        schedule = " cosine" if ft.get("schedule") == "cosine" else ""
        return f"{what} {ft.get('epochs')} ep @{fmt_number(ft.get('learning_rate'), 'g')}{schedule}"

    ft = variant.get("fine_tune")
    if not ft:
        return "–"
    before = ft.get("after_pruning")
    return (one(before) + " + " if before else "") + one(ft)


def variants_table(report: dict) -> str:
    """A Markdown table of the variants of a ``report.json`` dict (also used by the CLI)."""
    labelled = report["evaluation"].get("labelled")
    measured = not report["evaluation"].get("not_measured")  # a timing-only report (random weights) has no accuracy
    tuned = any(v.get("fine_tune") for v in report["variants"])
    head = ["variant", "target", "precision", "io"] + (["fine-tuned"] if tuned else []) + ["size KiB", "zlib KiB"]
    head += ["top-1 %", "drop pts"] if labelled else []
    head += ["agree %", "SQNR dB"] if measured else ["accuracy"]
    timed = any(v.get("latency") for v in report["variants"])
    head += ["median ms"] if timed else []
    head += ["status"]
    rows = []
    for v in report["variants"]:
        row = [v["name"], v["target"], v["precision"], v["io_type"]] + ([fine_tune_text(v)] if tuned else [])
        row += [fmt_kib(v["size_bytes"]), fmt_kib(v["compressed_bytes"])]
        if labelled:
            row += [fmt_number(v["top1"]), "not meaningful" if v["status"] == "float_at_chance" else fmt_drop(v)]
        row += [fmt_number(v["agreement"]), fmt_number(v["sqnr_db"], ".1f")] if measured else ["not measured"]
        if timed:
            row += [fmt_number((v.get("latency") or {}).get("median_ms"), ".3f")]
        row += [v["status"]]
        rows.append(row)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def runtimes_markdown(report: dict) -> list[str]:
    """The metadata the models carry and, per model, which runtimes take it (and why not)."""
    meta = report.get("metadata")
    rows = [v for v in report["variants"] if v.get("runtimes")]
    if not meta and not rows:
        return []
    lines = ["## Shipping", ""]
    if meta:
        norm = "not stated" if meta.get("mean") is None else f"(pixel - {meta['mean']}) / {meta['std']}"
        labels = (f"{meta['labels_count']} class names in `{meta['labels_file']}` ({meta.get('labels_from')})"
                  if meta.get("labels_count") else "none (unlabelled data; pass --labels FILE)")
        lines += [f"- metadata: name `{meta['name']}`, input {meta['color_space']}, normalization {norm}, labels {labels}"]
        lines += [f"- warning: {meta['labels_order']}"] if meta.get("labels_order") else []
        lines += [""]
    if rows:
        lines += ["| model | LiteRT interpreter | MediaPipe Tasks / Task Library | Edge TPU |", "|---|---|---|---|"]
        mark = {True: "yes", False: "no", None: "?"}
        for v in rows:
            cells = [f"{mark[r.get('ok')]}: {r.get('why', '')}" for r in (v["runtimes"].get(k, {}) for k in ("litert", "mediapipe", "edgetpu"))]
            lines.append(f"| {v['name']} | " + " | ".join(c.replace("|", "/") for c in cells) + " |")
        lines.append("")
    return lines


def check_details(name: str, details: dict) -> list[str]:
    """The lines a target check adds under its verdict (e.g. the Edge TPU's parameter memory), as inspect shows them."""
    from edgeresnet.targets.checks import get_check

    check = get_check(name)
    if check is None or check.describe is None:
        return []
    notes = set(details.get("notes") or ())
    return [line for line in check.describe(details) if line.split(": ", 1)[-1] not in notes]


def to_markdown(report: dict) -> str:
    lines = _header_lines(report)
    lines += ["", "## Variants", "", variants_table(report), ""]
    lines += runtimes_markdown(report)
    lines += device_check.markdown(report["variants"])
    for v in report["variants"]:
        lines += _variant_lines(v)
    notes = dict.fromkeys((name, note) for v in report["variants"] for name, chk in (v.get("checks") or {}).items()
                          for note in chk.get("notes") or ())
    lines += [f"- note ({name}): {note}" for name, note in notes]  # once per run, not once per model
    if report.get("prune") and report["prune"].get("layers"):
        lines += ["", "## Per-layer sparsity", "", "| layer | kind | target | achieved | weights |", "|---|---|---|---|---|"]
        for layer in report["prune"]["layers"]:
            lines.append(
                f"| {layer.get('name')} | {layer.get('kind')} | {fmt_number(layer.get('target_sparsity'))} | "
                f"{fmt_number(layer.get('achieved_sparsity'))} | {layer.get('weights')} |"
            )
    if (report.get("cluster") or {}).get("layers"):
        lines += ["", "## Per-layer clusters", "", "| layer | distinct weights |", "|---|---|"]
        lines += [f"| {name} | {n} |" for name, n in report["cluster"]["layers"].items()]
    timings = report.get("timings") or {}
    spent = [f"{stage} {sec:.1f}" for stage, sec in timings.items() if sec >= 0.05]
    if spent:
        lines += ["", "Time by stage (s): " + ", ".join(spent) + "."]
    lines += ["", f"Written by edgeresnet {report['edgeresnet_version']} on {report['created']} in {report['seconds']} s.", ""]
    return "\n".join(lines)


def _header_lines(report: dict) -> list[str]:
    """The model, the data, the float baseline, the budget and pruning, one line each."""
    m, f, e, c = report["model"], report["float"], report["evaluation"], report.get("calibration")
    lines = [
        f"# edgeresnet report: {m['name']}",
        "",
        f"- model: `{m['source']}` ({m['flavor']}, input {tuple(m['input_shape'])}, {m['classes']} classes)",
        f"- loaded in safe mode: {safe_mode_text(m.get('safe_mode'))}",
        f"- preprocessing: preset `{report['preprocessing']['preset']}`"
        + (" folded into the model (it takes raw pixels)" if report["preprocessing"]["folded_into_model"] else ""),
    ]
    if c:
        lines.append(
            f"- calibration: {c.get('count')} images from `{c.get('source')}`, seed {c.get('seed')}, "
            f"resize `{c.get('resize')}`" + (", class-balanced" if c.get("balanced") else "")
        )
        for w in c.get("warnings") or ():
            lines.append(f"  - warning: {w}")
    if e.get("not_measured"):
        lines.append(f"- accuracy: not measured: {e['not_measured']}; this report gives sizes and latency only")
    else:
        lines.append(f"- evaluation: {e['count']} images from `{e['source']}` ({e['origin']})")
    if f.get("top1") is not None:
        lines.append(f"- float model: top-1 {f['top1']:.2f} %, top-5 {f['top5']:.2f} %")
    if f.get("at_chance"):
        lines.append(f"  - warning: {at_chance_text(f['at_chance'])}")
    lines += _memory_lines(report.get("memory"))
    if report.get("max_drop") is not None:
        lines.append(f"- budget: --max-drop {report['max_drop']} pts: {'met' if report['passed'] else 'NOT met'}")
    data = sorted({str(v["fine_tune"].get("data")) for v in report["variants"] if v.get("fine_tune")})
    if data:
        lines.append(f"- fine-tuning data: {', '.join(f'`{d}`' for d in data)} (each variant's `fine_tune` says how)")
    if report.get("prune"):
        p = report["prune"]
        how = "fine-tuned" if p.get("fine_tuned") else "one-shot, not fine-tuned"
        lines.append(
            f"- pruning: sparsity {p.get('sparsity')} ({p.get('structure')}, {p.get('schedule')} schedule, {how}); "
            f"Keras-side sparsity {p.get('keras_sparsity')}"
        )
        for d in p.get("left_dense") or ():
            lines.append(f"  - left dense: `{d['name']}`: {d['reason']}")
        for w in p.get("warnings") or ():
            lines.append(f"  - warning: {w}")
    return lines + cluster_lines(report.get("cluster"))


def clustering_text(c: dict) -> str:
    """How the models were clustered (a ``cluster`` record), in words every view shows alike."""
    epochs = c.get("epochs")
    how = (f"fine-tuned {epochs} epoch{'' if epochs == 1 else 's'} on the fine-tuning data keeping the clusters"
           if c.get("fine_tuned") else "one-shot, not fine-tuned")
    where = "every Conv2D/Dense layer but the stem" if c.get("stem_left") else "the layers asked for"
    return (f"{c.get('clusters')} clusters per kernel in {c.get('clustered_layers')} layers ({where}; {how}); "
            f"at most {c.get('max_values')} distinct weights in a layer (a pruned layer's zeros are one more)")


def cluster_lines(cluster: Optional[dict]) -> list[str]:
    """The header line of a --cluster N run."""
    return [f"- clustering: {clustering_text(cluster)}"] if cluster else []


def at_chance_text(at: dict) -> str:
    """What ``float.at_chance`` says, in words every view shows alike."""
    return (f"at chance for {at['classes']} classes (up to {at['threshold']:.2f} % on {at['count']} images): "
            "drift figures not meaningful")


def _memory_lines(mem: Optional[dict]) -> list[str]:
    """One line: the peak RSS of each stage, and the fine-tuning batch with the bound it was chosen for."""
    if not mem:
        return []
    peaks = ", ".join(f"{stage} {mib:,}" for stage, mib in mem["peak_rss_mib"].items())
    line = f"- memory: peak RSS (MiB) {peaks}"
    if mem.get("batch_size") is not None:
        line += f"; {mem['why']}"
    return [line]


def choice_text(quantization: dict) -> str:
    """What ``--int8-method auto`` scored and kept, in one sentence."""
    c = quantization["choice"]
    if not c["scored"]:
        return f"int8 method {c['winner']}: {c.get('note', '')}"
    scores = ", ".join(f"{s['method']} {s['agreement']:.1f} % ({s['sqnr_db']:.1f} dB, {s['seconds']:.1f} s)"
                       for s in c["scored"])
    text = (f"int8 method {c['winner']} kept by auto: agreement with the float model on {c['held_out']} held-out "
            f"calibration images (calibrated on the other {c['fit']}; the kept model then on all "
            f"{c.get('kept_fit', c['fit'])}): {scores}; "
            + (f"ahead by {c['margin']:.1f} pts" if c["margin"] >= 0 else
               f"kept as tried first: a later method must agree on 2 more held-out images, not {-c['margin']:.1f} pts"))
    skipped = "; ".join(f"{s['method']} not tried: {s['why']}" for s in c["skipped"])
    return text + (f"; {skipped}" if skipped else "")


def ranges_text(d: dict) -> str:
    """What learning the activation ranges (``mse+gptq+ranges``) did, in one sentence."""
    if d.get("ranges_note"):
        return f"activation ranges not learned: {d['ranges_note']}"
    held = d.get("range_held_out")
    on = f"{held} held-out calibration images" if held else "the calibration images (too few to hold some out)"
    if not d.get("ranges_learned"):
        return (f"learned activation ranges not kept: no step lowered the divergence from the float model on {on} "
                f"({d['range_kl_before']:.3g}); {d.get('range_seconds', 0):.1f} s")
    return (f"{d['ranges_learned']} activation ranges learned ({d['range_steps']} steps, "
            f"{d.get('range_seconds', 0):.1f} s): divergence from the float model on {on} "
            f"{d['range_kl_before']:.3g} -> {d['range_kl_after']:.3g}")


def _variant_lines(v: dict) -> list[str]:
    """What the table cannot say about one variant: errors, recovery, worst layers, check results."""
    lines = []
    if v.get("error"):
        lines.append(f"- `{v['name']}`: {v['status']}: {v['error']}")
    own = (v.get("prune") or {}).get("vs_pruned_float")
    if own:
        top1 = "" if own.get("float_top1") is None else (
            f"top-1 {fmt_number(own['float_top1'])} % (this model {fmt_number(own.get('top1'))} %, drop {fmt_number(own.get('drop_pts'))} pts), ")
        lines.append(
            f"- `{v['name']}` against {own['reference']}: {top1}agreement {fmt_number(own.get('agreement'))} %, "
            f"SQNR {fmt_number(own.get('sqnr_db'), '.1f')} dB: the conversion's error alone (the table's drop and "
            "agreement are against the unpruned float model: pruning, fine-tuning and conversion together)"
        )
    if (v.get("int8_quantization") or {}).get("choice"):
        lines.append(f"- `{v['name']}`: {choice_text(v['int8_quantization'])}")
    ranges = ((v.get("int8_quantization") or {}).get("details") or {})
    if "ranges_learned" in ranges:
        lines.append(f"- `{v['name']}`: {ranges_text(ranges)}")
    if v.get("recovered_by"):
        lines.append(f"- `{v['name']}` was over budget; recovered as `{v['recovered_by']}`")
    if v.get("recovery"):
        r = v["recovery"]
        cost = r.get("cost") or {}
        lines.append(
            f"- `{v['name']}`: kept in float on top of its `{r.get('method')}` int8 model: "
            f"{', '.join(r.get('float_layers') or []) or 'nothing'} "
            f"({'budget met' if r.get('met') else 'budget NOT met'}); size "
            f"{(cost.get('size_bytes') or {}).get('initial')} -> {(cost.get('size_bytes') or {}).get('final')} bytes, "
            f"median latency {(cost.get('latency_ms') or {}).get('initial')} -> {(cost.get('latency_ms') or {}).get('final')} ms"
        )
    if v.get("worst_layers"):
        names = ", ".join(str(w.get("name") or w.get("layer")) for w in v["worst_layers"][:5])
        lines.append(f"- `{v['name']}`: layers with the largest int8 error: {names}")
    for name, chk in (v.get("checks") or {}).items():
        lines.append(f"- `{v['name']}` {name}: {'ok' if chk.get('ok') else 'NOT ok' if chk.get('ok') is False else 'unknown'}: {chk.get('summary', '')}")
        lines += [f"  - {line}" for line in check_details(name, chk)]
    return lines
