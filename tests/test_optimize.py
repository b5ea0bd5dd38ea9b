"""`edgeresnet optimize` (edgeresnet.host.optimize): budgets, allocation, the search end to end, resume.

Fast tests check the settings, the budget arithmetic, the per-layer allocation and the peak-memory probe;
the tiny-model runs (tiny ResNet, 16x16x3, 4 classes, 1 fine-tuning epoch, minmax int8) build real
.tflite candidates, and the tests measure the chosen one again in the interpreter. The runs on real models
(the ResNet-8 acceptance run, the built-in resnet8's input sizes) are in tests/test_optimize_real.py.
"""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest

from edgeresnet.errors import ConfigError
from edgeresnet.host.optimize import Budgets, OptimizeOptions
from edgeresnet.host.optimize.candidates import LayerInfo, allocate

TINY = ["--preset", "unit", "--epochs", "1", "--batch-size", "16", "--int8-method", "minmax", "--calib-samples", "32"]


def _layers():
    return [LayerInfo("stem", "stem", 400, 1, 9.0), LayerInfo("small", "body", 2_000, 1, 6.0),
            LayerInfo("big", "body", 36_000, 1, 0.2), LayerInfo("mid", "body", 9_000, 1, 1.0),
            LayerInfo("fc", "classifier", 640, 1, 4.0)]


def test_allocation_prunes_as_many_weights_as_uniform_and_spares_sensitive_layers():
    layers = _layers()
    body = sum(layer.weights for layer in layers if layer.role == "body")
    uniform = allocate(layers, 0.6, 0.0)
    assert uniform == {"stem": 0.0, "small": 0.6, "big": 0.6, "mid": 0.6, "fc": 0.0}
    for skew in (0.5, 1.0):
        shares = allocate(layers, 0.6, skew)
        zeros = sum(shares[layer.name] * layer.weights for layer in layers)
        assert zeros == pytest.approx(0.6 * body, rel=1e-6)
        assert shares["big"] > 0.6 > shares["small"] and shares["stem"] < shares["small"]
        assert max(shares.values()) <= 0.95


def test_budgets_refuse_impossible_values_and_report_excess():
    for bad in ({"size": -1}, {"download": 0}, {"latency": float("nan")}, {"memory": True}, {"drop": -0.5}):
        with pytest.raises(ConfigError):
            Budgets(**bad)
    b = Budgets(download=1000, drop=2.0)
    assert b.given == ("download",) and b.primary == "download"
    assert b.excess({"download": 1000, "size": 5000, "drop": 2.0}) == {}
    over = b.excess({"download": 1100, "drop": 3.0})
    assert over["download"] == pytest.approx(1.1) and "drop" in over


def test_options_need_a_budget_and_an_int8_target(tmp_path):
    folder = str(tmp_path)
    with pytest.raises(ConfigError, match="at least one budget"):
        OptimizeOptions(model="m.h5", train=folder, eval=folder)
    with pytest.raises(ConfigError, match="int8"):
        OptimizeOptions(model="m.h5", train=folder, eval=folder, budgets=Budgets(size=10), target="gpu")


@pytest.mark.parametrize("args, says", [
    (["--max-download", "-5"], "--max-download"),
    ([], "at least one budget"),
    (["--max-size", "1000", "--target", "tpu"], "tpu"),
])
def test_bad_input_is_one_line_and_writes_nothing(run_cli, tiny_model_h5, tiny_data, tmp_path, args, says):
    out = tmp_path / "out"
    code, _, err = run_cli(["optimize", tiny_model_h5, "--train", tiny_data["calib"], "--eval", tiny_data["eval"],
                            "--out", out, *args])
    assert code == 2 and says in err and "Traceback" not in err
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_missing_model_and_existing_output(run_cli, tiny_model_h5, tiny_data, tmp_path):
    common = ["--train", tiny_data["calib"], "--eval", tiny_data["eval"], "--max-size", "100000"]
    code, _, err = run_cli(["optimize", tmp_path / "nope.h5", *common, "--out", tmp_path / "o"])
    assert code != 0 and "nope.h5" in err and "Traceback" not in err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    code, _, err = run_cli(["optimize", tiny_model_h5, *common, "--out", tmp_path / "taken"])
    assert code == 2 and "--overwrite" in err
    assert (tmp_path / "taken" / "mine.txt").read_text() == "keep"


@pytest.mark.slow
def test_peak_memory_grows_with_the_model(tiny_model_h5, tmp_path):
    from edgeresnet.device.peak_memory import peak_memory
    from edgeresnet.host.models.loading import load_model
    from edgeresnet.host.converter import ConversionSpec, convert

    loaded = load_model(tiny_model_h5)
    fp32 = convert(loaded.tflite_converter, ConversionSpec("fp32")).model
    assert 0 < peak_memory(fp32) < 64 * 2**20


def _plain_download(model_h5, calib) -> int:
    from edgeresnet.device.images import load_images
    from edgeresnet.device.presets import get_preset
    from edgeresnet.host.optimize.evaluate import convert_int8
    from edgeresnet.host.models.loading import load_model

    loaded = load_model(model_h5)
    x = get_preset("unit").apply(load_images(calib, loaded.input_shape, samples=32).images)
    opts = OptimizeOptions(model=str(model_h5), train=str(calib), eval=str(calib), budgets=Budgets(size=1))
    return len(zlib.compress(convert_int8(loaded.model, opts, x, method="minmax"), 9))


@pytest.mark.slow
def test_impossible_budget_names_the_closest_then_a_resumed_search_meets_a_real_one(
        run_cli, tiny_model_h5, tiny_data, tmp_path, monkeypatch):
    from edgeresnet.device.runtime import TFLiteModel
    from edgeresnet.device.images import load_images
    from edgeresnet.host.optimize import search

    out = tmp_path / "opt"
    common = ["optimize", tiny_model_h5, "--train", tiny_data["calib"], "--eval", tiny_data["eval"], "--out", out, *TINY]
    # 1. nothing can be 100 zlib bytes: a one-line error naming the closest candidate; --out is not written
    code, _, err = run_cli([*common, "--max-download", "100"])
    assert code == 3 and "closest is int8 (no pruning)" in err and "--max-download" in err, err
    assert not out.exists()
    # 2. a real budget, killed after its first fine-tuned candidate
    budget = int(0.7 * _plain_download(tiny_model_h5, tiny_data["calib"]))
    built = []
    real = search.evaluate

    def dies_after_one(cand, *a, **k):
        if len(built) == 1:
            raise KeyboardInterrupt
        built.append(cand.key)
        return real(cand, *a, **k)

    monkeypatch.setattr(search, "evaluate", dies_after_one)
    code, _, err = run_cli([*common, "--max-download", budget])
    assert code != 0 and not out.exists() and len(built) == 1
    # 3. started again: the int8 model, the profile and the finished candidate are reused, not rebuilt
    again = []
    monkeypatch.setattr(search, "evaluate", lambda cand, *a, **k: (again.append(cand.key), real(cand, *a, **k))[1])
    code, stdout, err = run_cli([*common, "--max-download", budget])
    assert code == 0, err
    # reused: the plain int8 model and its three mixed candidates (run 1) and the fine-tuned one (run 2)
    assert "reusing 5 finished candidate(s)" in err and built[0] not in again
    assert not any(key.startswith(("int8-", "mixed-000")) for key in again)  # the mixed ones on a pruned one are new
    summary = json.loads((out / "optimize.json").read_text())
    chosen = next(c for c in summary["candidates"] if c["key"] == summary["chosen"])
    # what it reports within budget is within it when measured again, and scores what it said
    data = (out / "optimized.tflite").read_bytes()
    assert len(zlib.compress(data, 9)) == chosen["measured"]["download"] <= budget
    assert len(data) == chosen["measured"]["size"]
    ev = load_images(tiny_data["eval"], (16, 16, 3))
    pred = TFLiteModel(data).predict(ev.images.astype(np.float32) / 255.0).argmax(-1)
    assert 100.0 * float(np.mean(pred == ev.labels)) == pytest.approx(chosen["score"], abs=1e-6)
    # every front model is a real file; the plot and the table are there; the resume state is gone
    for key in summary["front"]:
        assert (out / "candidates" / f"{key}.tflite").is_file()
    assert (out / "front.png").stat().st_size > 1000 and "Chosen" in (out / "optimize.md").read_text()
    assert chosen["settings"]["layer_sparsity"] and "why" in summary
    assert not any(p.name.endswith("optimize-state") for p in tmp_path.iterdir())


@pytest.mark.slow
def test_per_layer_sparsity_reaches_the_tflite_and_memory_and_latency_are_measured_with_jobs_2(
        run_cli, tiny_model_h5, tiny_data, tmp_path):
    from edgeresnet.device.peak_memory import peak_memory
    from edgeresnet.device.sparsity import tflite_weight_sparsity

    out = tmp_path / "opt"
    code, _, err = run_cli(["optimize", tiny_model_h5, "--train", tiny_data["calib"], "--eval", tiny_data["eval"],
                            "--out", out, *TINY, "--max-latency", "1000", "--max-memory", 2**30, "--threads", "1",
                            "--jobs", "2"])
    assert code == 0, err
    summary = json.loads((out / "optimize.json").read_text())
    allocated = [c for c in summary["candidates"] if c["settings"]["family"] == "allocated"]
    assert {c["settings"]["family"] for c in summary["candidates"]} == {"int8", "uniform", "allocated", "clustered", "mixed"}
    # the worst int8 layers in float on top of the best fine-tuned candidate, whose weights a --jobs process kept
    on_best = [c for c in summary["candidates"] if c["settings"].get("base")]
    by_key = {c["key"]: c for c in summary["candidates"]}
    assert len(on_best) == 3 and all(by_key[c["settings"]["base"]]["fine_tuned_epochs"] for c in on_best)
    assert allocated and all("latency" in c["measured"] and "memory" in c["measured"] for c in summary["candidates"])
    # a front model's zeros are where its settings put them: a per-layer spread, not one sparsity
    for c in allocated:
        path = out / "candidates" / f"{c['key']}.tflite"
        if path.is_file():
            ops = tflite_weight_sparsity(path.read_bytes())["ops"]
            fractions = sorted(round(op["fraction"], 2) for op in ops if op["fraction"] > 0)
            assert len(set(fractions)) > 1
            assert peak_memory(path.read_bytes(), 1) > 0


@pytest.mark.parametrize("tf_config, extra, says", [
    ("", ["--strategy", "multiworker"], "--strategy multiworker needs TF_CONFIG"),
    ('{"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}}',
     ["--jobs", "2"], "pass --jobs 1"),
])
def test_a_cluster_the_search_cannot_use_is_one_line_before_any_work(run_cli, tiny_model_h5, tiny_data, tmp_path,
                                                                    monkeypatch, tf_config, extra, says):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    code, _, err = run_cli(["optimize", tiny_model_h5, "--train", tiny_data["calib"], "--eval", tiny_data["eval"],
                            "--max-size", "100000", *extra, "--out", tmp_path / "o"])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and says in lines[0], err
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def tiny_search(tiny_model_h5, tiny_data):
    """The tiny model's search options (cpu, minmax, a size budget) and data, loaded once."""
    from edgeresnet.host.optimize.evaluate import load_search_data

    opts = OptimizeOptions(model=str(tiny_model_h5), train=str(tiny_data["calib"]), eval=str(tiny_data["eval"]),
                           budgets=Budgets(size=10**7), preset="unit", int8_method="minmax", calib_samples=32)
    return opts, load_search_data(opts)


@pytest.mark.slow
def test_mixed_family_keeps_the_worst_int8_layers_in_float_and_measures_the_bigger_file(tiny_search, tmp_path):
    from edgeresnet.device.runtime import TFLiteModel
    from edgeresnet.host.optimize.candidates import Candidate
    from edgeresnet.host.optimize.evaluate import evaluate
    from edgeresnet.host.optimize.precision import plan_mixed, weight_dtypes
    from edgeresnet.host.optimize.state import SearchState

    opts, data = tiny_search
    _, plain = evaluate(Candidate("int8"), opts, data)
    notes = []
    mixed = plan_mixed(opts, data, SearchState(tmp_path / "out", opts.fingerprint()), notes.append)
    assert [len(c.worst) for c in mixed] == [1, 2, 3] and not notes
    x = data.eval.inputs(np.arange(len(data.eval)))
    for cand in mixed:
        blob, record = evaluate(cand, opts, data)
        # float32 weights in exactly the layers the candidate put in float (the worst ones and their int8 readers)
        dtypes = weight_dtypes(blob)
        floats = {layer for layer, dtype in dtypes.items() if dtype == "float32"}
        assert floats == set(cand.float_layers) & set(dtypes) >= set(cand.worst), (floats, cand)
        assert {dtype for layer, dtype in dtypes.items() if layer not in floats} == {"int8"}
        # measured on the real file: bigger than the plain int8 model, and scored as the interpreter runs it
        assert len(blob) == record["measured"]["size"] > plain["measured"]["size"]
        assert record["settings"]["worst"] == list(cand.worst) and "worst in float" in record["label"]
        pred = TFLiteModel(blob).predict(x).argmax(-1)
        assert 100.0 * float(np.mean(pred == data.labels)) == pytest.approx(record["score"], abs=1e-6)


@pytest.mark.slow
def test_float_layers_on_top_of_a_pruned_candidate_keep_its_zeros_and_train_nothing(tiny_search, tmp_path):
    """Sparsity and per-layer precision together: the mixed family on the best fine-tuned candidate."""
    from dataclasses import replace

    from edgeresnet.device.runtime import TFLiteModel
    from edgeresnet.host.optimize.candidates import candidate
    from edgeresnet.host.optimize.evaluate import evaluate
    from edgeresnet.host.optimize.precision import plan_on_best, weight_dtypes
    from edgeresnet.host.optimize.search import layer_profile
    from edgeresnet.host.optimize.state import SearchState

    opts, data = tiny_search
    opts = replace(opts, epochs=1, batch_size=16)
    state = SearchState(tmp_path / "out", opts.fingerprint())
    base = candidate("uniform", layer_profile(opts, data, state), 0.6)
    _, base_record = evaluate(base, opts, data, kept=state.path)
    assert (state.path / "candidates" / f"{base.key}.weights.npz").is_file()
    notes = []
    on_base = plan_on_best(opts, data, state, base, notes.append)
    assert [len(c.worst) for c in on_base] == [1, 2, 3] and base.label in notes[0]
    assert plan_on_best(replace(opts, target="edgetpu"), data, state, base) == []  # never float on the Edge TPU
    assert plan_on_best(replace(opts, qat=True), data, state, base) == []
    pruned = {name for name, share in base.layer_sparsity if share > 0}
    x = data.eval.inputs(np.arange(len(data.eval)))
    for cand in on_base[::2]:  # 1 and 3 worst layers
        blob, record = evaluate(cand, opts, data, kept=state.path)
        assert record["settings"]["base"] == base.key and record["fine_tuned_epochs"] == 0
        assert record["label"].startswith(base.label) and record["keras_sparsity"] is None
        dtypes = weight_dtypes(blob)
        assert {layer for layer, dtype in dtypes.items() if dtype == "float32"} >= set(cand.worst)
        # the base's zeros are in every pruned layer, float or int8: its fine-tuned weights, not the float model's
        from edgeresnet.device.sparsity import tflite_weight_sparsity

        ops = tflite_weight_sparsity(blob)["ops"]
        assert sum(op["fraction"] > 0.5 for op in ops) >= len(pruned) - 1, ops
        assert record["weights_sha256"] is None and len(blob) > base_record["measured"]["size"]
        pred = TFLiteModel(blob).predict(x).argmax(-1)
        assert 100.0 * float(np.mean(pred == data.labels)) == pytest.approx(record["score"], abs=1e-6)



def test_a_candidates_drop_carries_its_margin_from_the_interpreters_answers(tiny_search):
    from edgeresnet.device.runtime import TFLiteModel
    from edgeresnet.device.verify import paired_margin
    from edgeresnet.host.optimize.candidates import Candidate
    from edgeresnet.host.optimize.evaluate import evaluate

    opts, data = tiny_search
    blob, record = evaluate(Candidate("int8"), opts, data)
    pred = np.argmax(data.eval.predict(lambda b: TFLiteModel(blob).predict(b, batch=len(b))), axis=-1)
    margin = paired_margin(data.float_pred == data.labels, pred == data.labels)
    assert record["drop_margin"] == pytest.approx(margin, abs=1e-3) and margin >= 0


def test_edgetpu_never_gets_float_layers_and_reports_its_on_chip_memory(tiny_search, tmp_path):
    from dataclasses import replace

    from edgeresnet.device.tflite_graph import parse_tflite
    from edgeresnet.host.optimize.candidates import Candidate
    from edgeresnet.host.optimize.evaluate import evaluate
    from edgeresnet.host.optimize.precision import plan_mixed, precision_note

    opts, data = tiny_search
    tpu = replace(opts, target="edgetpu")
    notes = []
    assert plan_mixed(tpu, data, None, notes.append) == [] and "edgetpu cannot run float layers" in notes[0]
    assert "cannot run float layers" in precision_note("edgetpu") and "worst" in precision_note("cpu")
    blob, record = evaluate(Candidate("int8"), tpu, data)
    memory = record["edgetpu_memory"]
    graph = parse_tflite(blob)
    weights = sum(t.const_bytes for t in graph.tensors if t.is_constant)
    assert memory["cache_bytes"] == 8 * 2**20 and memory["fits_cache"] is True
    assert 0 < memory["param_bytes"] <= weights and memory["ops_mapped"] == memory["ops_total"]
    assert "edgetpu_memory" not in evaluate(Candidate("int8"), opts, data)[1]


@pytest.mark.slow
@pytest.mark.parametrize("target", ["cpu", "edgetpu"])
def test_the_search_weighs_float_layers_on_cpu_only(run_cli, tiny_model_h5, tiny_data, tmp_path, monkeypatch, target):
    """End to end with the fine-tuned families left out: the plain int8 model and the mixed family (cpu)."""
    from edgeresnet.host.optimize import search

    monkeypatch.setattr(search, "plan_candidates", lambda *a, **k: [])
    out = tmp_path / "opt"
    code, _, err = run_cli(["optimize", tiny_model_h5, "--train", tiny_data["calib"], "--eval", tiny_data["eval"],
                            "--out", out, *TINY, "--max-size", 10**7, "--target", target])
    assert code == 0, err
    summary = json.loads((out / "optimize.json").read_text())
    md = (out / "optimize.md").read_text()
    families = [c["settings"]["family"] for c in summary["candidates"]]
    # a model file has no input family, and the output says why in one line
    assert summary["input"].startswith("MODEL is a model file") and f"Input size: {summary['input']}." in md
    assert summary["input_shape"] == [16, 16, 3] and "input 16x16x3" in md
    for c in summary["candidates"]:  # every row: the drop with its 95 % margin
        assert f"| {c['drop']:.2f} ± {c['drop_margin']:.2f} |" in md
    if target == "cpu":
        assert families == ["int8", "mixed", "mixed", "mixed"] and "worst in float" in md
        plain = summary["candidates"][0]["measured"]["size"]
        assert all(c["measured"]["size"] > plain for c in summary["candidates"][1:])
    else:
        assert families == ["int8"] and "edgetpu cannot run float layers" in err
        memory = summary["candidates"][0]["edgetpu_memory"]
        assert "on-chip parameter memory: 8 MiB" in md and f"yes ({memory['param_bytes'] / 2**20:.2f} MiB)" in md


def test_float_nodes_take_each_worst_layer_with_its_readers_and_spare_the_integer_io_boundary():
    from edgeresnet.host.optimize.precision import float_nodes, mixed_candidates

    def row(name, consumers=(), boundary=False):
        return {"name": name, "layer": name, "op": "CONV_2D", "channel_error": 0.0, "consumers": list(consumers),
                "boundary": boundary}

    ranking = [row("stem", ["a"], boundary=True), row("a", ["add"]), row("b", ["add"]), row("add", ["fc"]),
               row("fc", boundary=True)]
    assert float_nodes(ranking, 1, integer_io=True) == (("a",), ("a", "add"))
    assert float_nodes(ranking, 2, integer_io=True) == (("a", "b"), ("a", "add", "b"))
    assert float_nodes(ranking, 1, integer_io=False) == (("stem",), ("stem", "a"))
    assert float_nodes(ranking, 9, integer_io=False) == ((), ())  # never every layer: that is the fp32 model
    cands = mixed_candidates(ranking, integer_io=True)
    assert [c.worst for c in cands] == [("a",), ("a", "b")]  # a third layer would be "add", in float already
    assert cands[1].to_dict()["float_nodes"] == ["a", "add", "b"] and cands[0].key != cands[1].key


def test_a_size_budget_the_plain_model_meets_plans_no_unpruned_sparsity_candidate(tiny_search):
    from edgeresnet.host.optimize.candidates import Candidate
    from edgeresnet.host.optimize.evaluate import evaluate
    from edgeresnet.host.optimize.search import CLUSTER_CHOICES, plan_candidates

    opts, data = tiny_search
    plain, _ = evaluate(Candidate("int8"), opts, data)
    notes = []
    cands = plan_candidates(opts, plain, _layers(), notify=notes.append)  # budget 10 MB: the plain model fits
    assert [(c.family, c.level, c.clusters) for c in cands] == [("clustered", 0.0, CLUSTER_CHOICES[0])]
    assert len(notes) == 2 and all("nothing to prune" in n for n in notes)


# ---------------------------------------------------------------------- the input family (a built-in architecture resized)


@pytest.mark.parametrize("name, base, sizes", [
    ("resnet8", 32, [28, 24, 20, 16, 12, 8]),  # CIFAR: two stride-2 stages, the last map at least 2x2 (8 px)
    ("resnet20", 30, [28, 24, 20, 16, 12, 8]),
    ("resnet18", 224, [192, 160, 128, 96, 64]),  # ImageNet: stride 32, down to 64 px
    ("resnet50", 64, []),
])
def test_input_sizes_step_by_the_architectures_stride_and_their_macs_fall_with_the_pixels(name, base, sizes):
    from edgeresnet.host.models.zoo import zoo_spec
    from edgeresnet.host.optimize.inputs import input_sizes, macs

    spec = zoo_spec(name)
    assert input_sizes(spec, base) == sizes
    counts = [macs(spec, s, 3, 10) for s in [base, *sizes]]
    assert counts == sorted(counts, reverse=True) and len(set(counts)) == len(counts)


@pytest.mark.parametrize("fitting, guess, chosen", [
    ({20, 16, 12}, 2, 20),  # the guess fits: walk up while the next larger fits
    ({16, 12}, 1, 16),  # the guess is over: walk down to the first that fits
    ({28, 24, 20, 16, 12}, 3, 28),
    (set(), 0, None),
])
def test_the_probes_walk_to_the_largest_size_that_fits(fitting, guess, chosen):
    from edgeresnet.host.optimize.inputs import largest_fitting

    asked = []
    fits = lambda s: (asked.append(s), s in fitting)[1]  # noqa: E731
    assert largest_fitting([28, 24, 20, 16, 12], guess, fits) == chosen
    assert len(asked) <= 5


def test_an_input_candidates_key_holds_its_size_and_a_zoo_model_needs_weights(tmp_path):
    from edgeresnet.host.optimize.candidates import Candidate

    a, b = Candidate("input", input_size=24), Candidate("input", input_size=28)
    assert "-24px-" in a.key and "-28px-" in b.key and a.key != b.key and a.label == "input 24x24"
    assert a.to_dict()["input_size"] == 24 and "input_size" not in Candidate("int8").to_dict()
    folder, weights = str(tmp_path), tmp_path / "w.h5"
    with pytest.raises(ConfigError, match="--weights"):
        OptimizeOptions(model="resnet8", train=folder, eval=folder, budgets=Budgets(latency=1.0))
    with pytest.raises(ConfigError, match="built-in architecture"):
        OptimizeOptions(model="m.h5", train=folder, eval=folder, budgets=Budgets(latency=1.0), weights=str(weights))
    with pytest.raises(ConfigError, match="--input-size"):
        OptimizeOptions(model="resnet8", train=folder, eval=folder, budgets=Budgets(latency=1.0),
                        weights=str(weights), input_size=0)


def test_a_model_file_gets_no_input_family_and_says_why(tiny_search, tmp_path):
    from dataclasses import replace

    from edgeresnet.host.optimize.inputs import input_note, plan_inputs
    from edgeresnet.host.optimize.state import SearchState

    opts, data = tiny_search
    opts = replace(opts, budgets=Budgets(latency=0.001, memory=1000))
    plain = {"key": "int8", "settings": {"family": "int8"}, "measured": {"latency": 0.05, "memory": 400_000}}
    notes = []
    assert plan_inputs(opts, data, SearchState(tmp_path / "o", opts.fingerprint()), plain, notes.append) == []
    assert len(notes) == 1 and "not a built-in architecture" in notes[0] and "\n" not in notes[0]
    assert input_note(opts, data, [plain]) == notes[0]


def test_a_zoo_model_without_weights_or_with_a_missing_file_is_one_line(run_cli, tiny_data, tmp_path):
    common = ["optimize", "resnet8", "--train", tiny_data["calib"], "--eval", tiny_data["eval"], "--max-latency", "1",
              "--out", tmp_path / "o"]
    code, _, err = run_cli(common)
    assert code == 2 and "resnet8 has random weights" in err and "--weights" in err and "Traceback" not in err
    code, _, err = run_cli([*common, "--weights", tmp_path / "none.h5"])
    assert code != 0 and "none.h5" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_with_qat_a_clustered_candidate_gets_cluster_and_sparsity_preserving_qat(tiny_search, tmp_path):
    """--qat: a pruned and clustered candidate is fine-tuned, then quantization-aware trained keeping its zeros and
    clusters; its int8 file comes from the QAT model and still holds at most N values (and 0) per output channel."""
    from dataclasses import replace

    from edgeresnet.device.runtime import TFLiteModel
    from edgeresnet.device.tflite_graph import parse_tflite
    from edgeresnet.host.optimize.candidates import candidate
    from edgeresnet.host.optimize.evaluate import evaluate
    from edgeresnet.host.optimize.search import layer_profile
    from edgeresnet.host.optimize.state import SearchState

    opts, data = tiny_search
    opts = replace(opts, qat=True, epochs=1, batch_size=16)
    layers = layer_profile(opts, data, SearchState(tmp_path / "out", opts.fingerprint()))
    cand = candidate("clustered", layers, 0.5, clusters=4)
    blob, record = evaluate(cand, opts, data)
    assert record["qat"] == "prune_cluster_preserve_8bit" and record["fine_tuned_epochs"] == 2
    graph = parse_tflite(blob)
    pruned = {name: s for name, s in cand.layer_sparsity if s > 0.3}
    assert pruned
    seen = 0
    for _, tensor in graph.filter_tensors():
        names = [name for name in cand.clustered if {name, f"quant_{name}"} & set(tensor.name.split("/"))]
        if names:
            q = graph.const_array(tensor.index)
            seen += 1
            assert max(len(np.unique(q[c][q[c] != 0])) for c in range(q.shape[0])) <= 4, tensor.name
            if names[0] in pruned:  # the zeros survived QAT
                assert float(np.mean(q == 0)) >= pruned[names[0]] - 0.05, (tensor.name, pruned[names[0]])
    assert seen == len(cand.clustered)
    pred = TFLiteModel(blob).predict(data.eval.inputs(np.arange(len(data.eval)))).argmax(-1)
    assert 100.0 * float(np.mean(pred == data.labels)) == pytest.approx(record["score"], abs=1e-3)  # 3 decimals
    assert record["score"] > 50  # 4 classes: it still classifies


def test_scores_within_half_a_point_are_ties_and_the_smaller_candidate_wins():
    from edgeresnet.host.optimize.result import TIE_POINTS, choose

    def rec(key, score, download):
        return {"key": key, "label": key, "score": score, "drop": 0.0, "measured": {"download": download}}

    budgets = Budgets(download=50_000)
    best, why = choose([rec("big", 76.5, 47_000), rec("small", 76.5 - TIE_POINTS + 0.1, 43_000),
                        rec("tiny", 74.0, 40_000)], budgets, "top-1")
    assert best["key"] == "small" and "within 0.5 points of the highest" in why and "76.50 %" in why
    best, why = choose([rec("big", 76.5, 47_000), rec("small", 75.9, 43_000)], budgets, "top-1")
    assert best["key"] == "big" and "has the highest" in why
    best, _ = choose([rec("a", 70.0, 45_000), rec("over", 90.0, 60_000)], budgets, "top-1")
    assert best["key"] == "a"
