"""Reporter: tables on stdout, notes on stderr, JSON mode, silence, progress only on a TTY."""

import io
import json
import re

import pytest
from rich.console import Console

from diffq_cli.cli.report import BAR_WIDTH, Reporter, bits_bar

ROWS = [
    {"label": "float", "accuracy": 97.5, "delta": 0.0, "true_mb": 42.627, "artifact_mb": None,
     "compression": 1.0, "mean_bits": 32},
    {"label": 1e-3, "accuracy": 96.125, "delta": -1.375, "true_mb": 2.1, "artifact_mb": 2.31,
     "compression": 20.3, "mean_bits": 3.21},
]
TRADEOFF = [
    {"method": "float", "label": "float32", "accuracy": 97.5, "true_mb": 42.6, "best": True},
    {"method": "ptq", "label": "2 bits", "accuracy": 9.7, "true_mb": 2.7, "collapsed": True},
    {"method": "diffq", "label": "target=4MiB", "accuracy": 96.0, "true_mb": 3.98,
     "mu": 0.4321, "best": True},
]
LAYERS = [
    {"name": "conv1.weight", "numel": 9408, "bits_mean": 7.5, "bits_min": 3, "bits_max": 11,
     "mb": 0.0123},
    {"name": "fc.bias", "numel": 10, "bits_mean": None, "bits_min": None, "bits_max": None,
     "mb": 4e-5},
]
SIZE = {"path": "runs/x/model.th", "float_mb": 42.6, "true_mb": 2.0, "file_bytes": 2_200_000,
        "mean_bits": 1.5}


def test_tradeoff_table_to_stdout(capsys):
    Reporter().tradeoff_table(ROWS)
    out, err = capsys.readouterr()
    assert err == ""
    for text in ("mu", "accuracy", "vs float", "true size", "artifact", "compression",
                 "mean bits", "float", "0.001", "97.50 %", "96.12 %", "-1.38 pp",
                 "42.627 MiB", "2.310 MiB", "—", "1.00×", "20.30×", "32.00", "3.21"):
        assert text in out, text
    assert " MB" not in out and "96.125" not in out  # one unit, rounded
    assert out.index("float") < out.index("0.001")
    assert "\x1b[" not in out  # no colour codes when not a TTY


def test_tradeoff_table_marks_best_and_collapsed_rows(capsys):
    Reporter().tradeoff_table(TRADEOFF)
    lines = capsys.readouterr().out.splitlines()
    row = {name: next(line for line in lines if name in line)
           for name in ("float32", "2 bits", "target=4MiB")}
    assert "★" in row["float32"] and "★" in row["target=4MiB"] and "★" not in row["2 bits"]
    assert "chance" in row["2 bits"] and "chance" not in row["target=4MiB"]
    assert "0.432" in row["target=4MiB"] and "diffq" in row["target=4MiB"]
    assert any("★ best accuracy at its size or smaller" in line for line in lines)


def test_layer_table_and_bars(capsys):
    Reporter().layer_table(LAYERS, title="bits per layer")
    out = capsys.readouterr().out
    for text in ("bits per layer", "conv1.weight", "9,408", "7.50", "3–11", "0.0123",
                 "fc.bias", "<0.0001", "size (MiB)"):
        assert text in out, text
    assert "4e-05" not in out and "MB" not in out
    assert bits_bar(7.5) in out
    assert bits_bar(15) == "█" * BAR_WIDTH and bits_bar(99) == "█" * BAR_WIDTH
    assert bits_bar(0) == "" and bits_bar(None) == ""
    assert bits_bar(7.5) == "█" * 7 + "▌"  # one character per bit


def test_layer_table_shows_float_layers_as_kept_not_as_32_bits(capsys):
    kept = {"name": "bn1.weight", "numel": 64, "bits_mean": 32.0, "bits_min": 32,
            "bits_max": 32, "mb": 0.000244140625, "bound_mb": 0.000244140625, "disk_bytes": None}
    Reporter().layer_table([LAYERS[0] | {"disk_bytes": 1234, "bound_mb": 0.01}, kept], "t")
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "bn1.weight" in line)
    assert "kept in float32" in row and "32" not in row.replace("float32", "")
    assert "█" not in row and "0.0002" in row
    assert "1,234" in out and "bytes on disk" in out and "bound (MiB)" in out


def test_size_table(capsys):
    Reporter().size_table(SIZE)
    out = capsys.readouterr().out
    for text in ("runs/x/model.th", "float32 size", "42.600 MiB", "true quantized size",
                 "2.000 MiB", "bytes on disk", "2,200,000 bytes (2.098 MiB)", "21.30×",
                 "mean bits", "1.50"):
        assert text in out, text


def test_eval_table_in_words(capsys):
    Reporter().eval_table({"path": "m.th", "model": "resnet18", "dataset": "digits",
                           "accuracy": 94.98607242339833, "samples": 1797,
                           "recorded_accuracy": 94.98607242339833})
    out = capsys.readouterr().out
    for text in ("accuracy (measured now)", "94.99 %", "accuracy (recorded at training)",
                 "validation images", "1,797"):
        assert text in out, text
    assert "recorded_accuracy" not in out and "94.986" not in out


@pytest.mark.parametrize("ok, diff, verdict", [(True, 7.62939453125e-06, "yes (max abs diff "
                                                "7.6e-06 <= 1e-04)"),
                                               (False, 0.03125, "NO (max abs diff 3.1e-02 > "
                                                "1e-04)")])
def test_export_table_in_words(capsys, ok, diff, verdict):
    Reporter().export_table({"format": "pt2", "path": "m.pt2", "bytes": 11942060,
                             "true_mb": 10.685338020324707, "max_abs_diff": diff, "atol": 1e-4,
                             "ok": ok, "dtype": "fp32", "dtype_diff": None})
    out = capsys.readouterr().out
    for text in (verdict, "11,942,060 bytes (11.389 MiB)", "10.685 MiB", "weights dtype"):
        assert text in out, text
    for raw in ("True", "dtype_diff", "10.68533", "7.62939", "max_abs_diff", "true_mb"):
        assert raw not in out, raw


def test_activity_prints_start_and_end_lines_without_a_tty(capsys):
    with Reporter().activity("evaluating m.th"):
        pass
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines()[0] == "evaluating m.th..."
    assert re.fullmatch(r"evaluating m\.th: done in \d+\.\d s", err.splitlines()[1])


def _tty_reporter(monkeypatch):
    """A Reporter whose stderr is a 100-column terminal (colour allowed), and that stream."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("TERM", raising=False)
    rep = Reporter()
    stream = io.StringIO()
    rep.err = Console(file=stream, force_terminal=True, width=100)
    return rep, stream


def test_activity_spins_on_a_tty(monkeypatch):
    rep, stream = _tty_reporter(monkeypatch)
    with rep.activity("exporting m.th"):
        pass
    assert "exporting m.th" in stream.getvalue() and "done in" not in stream.getvalue()


def test_notes_go_to_stderr_verbatim(capsys):
    rep = Reporter()
    long = "epoch 1: loss [fc.*] " + "x" * 150
    rep.note(long)
    rep.warn("careful")
    out, err = capsys.readouterr()
    assert out == ""
    assert long in err and "warning: careful" in err  # not wrapped, brackets kept


def test_json_mode_prints_exactly_one_document(capsys):
    rep = Reporter(json_mode=True)
    rep.tradeoff_table(ROWS)
    rep.layer_table(LAYERS, title="bits")
    rep.size_table(SIZE)
    rep.note("progress goes to stderr")
    with rep.progress(total=3, description="epoch") as bar:
        bar.update(loss=1.0)
    rep.emit_json({"rows": ROWS, "mu": (1e-3,), "nan": float("nan")})
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["rows"][1]["accuracy"] == 96.125 and doc["mu"] == [1e-3] and doc["nan"] is None
    assert out == json.dumps(doc, indent=2) + "\n"
    assert "progress goes to stderr" in err


def test_disabled_reporter_is_silent(capsys):
    rep = Reporter(enabled=False)
    rep.tradeoff_table(ROWS)
    rep.note("hidden")
    rep.emit_json({"a": 1})
    with rep.progress(total=2, description="x") as bar:
        bar.update()
    assert capsys.readouterr() == ("", "")


def test_progress_is_a_no_op_when_not_a_tty(capsys):
    rep = Reporter()
    assert not rep.animated
    with rep.progress(total=5, description="epoch 1") as bar:
        for _ in range(5):
            bar.update(loss=0.5, acc=90.0, size=1.2)
    assert capsys.readouterr() == ("", "")


def test_progress_draws_on_a_tty(monkeypatch):
    rep, stream = _tty_reporter(monkeypatch)
    assert rep.animated
    with rep.progress(total=4, description="epoch 1") as bar:
        bar.update(advance=4, loss=0.25)
    assert "epoch 1" in stream.getvalue() and "loss 0.25" in stream.getvalue()


@pytest.mark.parametrize("value", ["1", "yes"])
def test_no_color_disables_animation_and_colour(monkeypatch, value):
    monkeypatch.setenv("NO_COLOR", value)
    rep = Reporter()
    assert rep.no_color and not rep.animated
    assert rep.out.no_color and rep.err.no_color
