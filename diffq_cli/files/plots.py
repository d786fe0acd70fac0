"""Pictures of a run, as SVG: the size/accuracy trade-off and the learned bit widths.

matplotlib is imported inside the drawing functions (a Figure on its own Agg canvas: no
pyplot, no global settings), so importing this module costs nothing at CLI start-up. Every
series carries an SVG id (matplotlib's ``gid``) so tests and scripts can find it in the file:
``float``, ``diffq``, ``ptq``, ``qat``, ``lsq`` (one marker per row) in ``tradeoff.svg``;
``layer-<i>`` (one bar per quantized layer), ``spread-<i>`` and ``width-<w>`` (the histogram)
in ``bits.svg``; a red cross ``collapsed-<method>-<i>`` over each point at chance level.
"""

from pathlib import Path

# Drawing order and style per method: (legend label, marker, line style).
_STYLE = {
    "ptq": ("uniform post-training", "s", "--"),
    "qat": ("uniform QAT", "^", "none"),
    "lsq": ("LSQ", "v", "none"),
    "diffq": ("DiffQ", "o", "none"),
    "float": ("float32", "*", "none"),
}


def _figure(**kwargs):
    """A Figure on its own Agg canvas: no pyplot, no backend switch, no global state, so a
    library user's own figures and settings are left alone."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> None:
    import io

    import matplotlib

    from diffq_cli.fileio import atomic_write

    buf = io.StringIO()
    # Stable ids (the same data gives the same file), for this save only.
    with matplotlib.rc_context({"svg.hashsalt": "diffq"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    atomic_write(Path(path), buf.getvalue().encode())


def tradeoff_svg(path, rows: list[dict], title: str = "", key: str = "true_mb") -> None:
    """Accuracy against true size (log axis; ``key="artifact_mb"``: the file), one series per
    method.

    Args:
        path: the SVG file to write.
        rows: dicts with ``method`` (float, diffq, ptq, qat, lsq, or any other name),
            ``label`` (shown next to DiffQ points), ``true_mb`` and ``accuracy`` (percent);
            rows missing either number are skipped. ``collapsed`` rows get a hollow marker;
            ``accuracy_sd`` (several seeds) an error bar.
        title: figure title.
    """
    fig = _figure(figsize=(7, 4.5))
    ax = fig.subplots()
    methods = list(dict.fromkeys([*_STYLE, *(r.get("method") for r in rows)]))
    for method in methods:
        points = sorted((r for r in rows if r.get("method") == method
                         and r.get(key) and r.get("accuracy") is not None),
                        key=lambda r: r[key])
        if not points:
            continue
        name, marker, line = _STYLE.get(method, (str(method), "D", "none"))
        (series,) = ax.plot([r[key] for r in points], [r["accuracy"] for r in points],
                            marker=marker, linestyle=line, label=name,
                            markersize=8 if method != "float" else 12)
        series.set_gid(method)
        for i, r in enumerate(points):
            if r.get("accuracy_sd"):  # several seeds: mean ± sd
                ax.vlines(r[key], r["accuracy"] - r["accuracy_sd"],
                          r["accuracy"] + r["accuracy_sd"], color=series.get_color()
                          ).set_gid(f"spread-{method}-{i}")
            if r.get("collapsed"):
                ax.plot([r[key]], [r["accuracy"]], marker="x", color="red",
                        markersize=10, linestyle="none")[0].set_gid(f"collapsed-{method}-{i}")
            if method in ("diffq", "qat", "lsq", "ptq"):
                ax.annotate(str(r.get("label", "")), (r[key], r["accuracy"]),
                            textcoords="offset points", xytext=(5, 5), fontsize=7,
                            color=series.get_color())
    ax.set_xscale("log")
    ax.set_xlabel(f"{'file' if key == 'artifact_mb' else 'true'} size (MiB, log scale)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title or "size / accuracy trade-off")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)


def layer_bits(state: dict) -> tuple[list[dict], dict[int, int]]:
    """Per quantized layer: mean, min and max width over its values; and the model's histogram
    (values per integer width), from a quantized state."""
    import torch

    from diffq_cli.quant.sizes import group_lengths
    from diffq_cli.quant.state import entry_group_bits, numel_of

    layers, hist = [], torch.zeros(16, dtype=torch.int64)
    for name, entry in state["quantized"].items():
        numel = numel_of(entry["shape"])
        bits = entry_group_bits(entry)
        lengths = group_lengths(numel, entry["group_size"])
        hist += torch.bincount(bits, weights=lengths.double(), minlength=16)[:16].long()
        layers.append({"name": name, "numel": numel,
                       "mean": float((bits * lengths).sum()) / numel,
                       "min": int(bits.min()), "max": int(bits.max())})
    return layers, {w: int(n) for w, n in enumerate(hist.tolist()) if n}


def _start_bits(state: dict, start: list) -> tuple[list[float], dict[int, int]]:
    """Per layer mean width and the model's width histogram of the run's *start* widths (one
    integer tensor per quantized layer, in the state's order)."""
    import torch

    from diffq_cli.quant.sizes import group_lengths
    from diffq_cli.quant.state import numel_of

    means, hist = [], torch.zeros(16, dtype=torch.int64)
    entries = list(state["quantized"].values())
    if len(entries) != len(start):
        raise ValueError(f"start widths for {len(start)} layers, the state has {len(entries)}")
    for entry, bits in zip(entries, start, strict=True):
        lengths = group_lengths(numel_of(entry["shape"]), entry["group_size"])
        bits = bits.to(torch.int64).cpu()
        hist += torch.bincount(bits, weights=lengths.double(), minlength=16)[:16].long()
        means.append(float((bits * lengths).sum()) / float(lengths.sum()))
    return means, {w: int(n) for w, n in enumerate(hist.tolist()) if n}


def bits_svg(path, state: dict, title: str = "", start: list | None = None) -> None:
    """Per layer: mean learned bits (bar) and the range of group widths (whisker); beside it,
    the share of the model's quantized weights at each width. With ``start``, where the run
    began too: each layer's mean start width (a red tick) and the start's histogram (outline),
    so what the widths learned shows.

    Args:
        path: the SVG file to write.
        state: a quantized state (``get_quantized_state()`` or an artifact's ``state``).
        title: figure title.
        start: each quantized layer's integer group widths at the start (a DiffQ run's).
    """
    layers, hist = layer_bits(state)
    if not layers:
        raise ValueError("the state has no quantized tensor: nothing to plot")
    begun, begun_hist = _start_bits(state, start) if start is not None else (None, {})
    height = max(3.0, 0.22 * len(layers) + 1.2)
    fig = _figure(figsize=(10, height))
    ax, hx = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    ys = list(range(len(layers)))[::-1]  # first layer on top
    bars = ax.barh(ys, [r["mean"] for r in layers], color="tab:blue", alpha=0.8,
                   label="mean bits")
    for i, (bar, r, y) in enumerate(zip(bars, layers, ys, strict=True)):
        bar.set_gid(f"layer-{i}")
        (whisker,) = ax.plot([r["min"], r["max"]], [y, y], color="black", marker="|",
                             markersize=8, linewidth=1)
        whisker.set_gid(f"spread-{i}")
    whisker.set_label("min-max group width")
    if begun is not None:
        for i, (mean, y) in enumerate(zip(begun, ys, strict=True)):
            (tick,) = ax.plot([mean], [y], color="tab:red", marker="|", markersize=12,
                              markeredgewidth=2, linestyle="none")
            tick.set_gid(f"start-{i}")
        tick.set_label("mean width at the start")
    ax.set_yticks(ys, [r["name"] for r in layers], fontsize=7)
    ax.set_xlabel("bits per weight")
    ax.set_xlim(0, max([r["max"] for r in layers] + list(begun_hist)) + 1)
    ax.legend(loc="lower right", fontsize=7)
    ax.grid(True, axis="x", alpha=0.3)
    total = sum(hist.values())
    widths = sorted(hist)
    hbars = hx.bar(widths, [100 * hist[w] / total for w in widths], color="tab:orange",
                   label="end")
    for w, bar in zip(widths, hbars, strict=True):
        bar.set_gid(f"width-{w}")
    if begun_hist:
        sbars = hx.bar(sorted(begun_hist), [100 * begun_hist[w] / total for w in
                                            sorted(begun_hist)],
                       fill=False, edgecolor="tab:red", linewidth=1.2, label="start")
        for w, bar in zip(sorted(begun_hist), sbars, strict=True):
            bar.set_gid(f"start-width-{w}")
        hx.legend(fontsize=7)
    hx.set_xlabel("group width (bits)")
    hx.set_ylabel("quantized weights (%)")
    hx.set_xticks(sorted(set(widths) | set(begun_hist)))
    hx.set_title("widths over the model", fontsize=9)
    fig.suptitle(title or "learned bit widths")
    _save(fig, path)
