"""``diffq size``: sizes of an artifact, a quantized state or a float checkpoint."""

from pathlib import Path

from diffq_cli.files.artifact import read_file
from diffq_cli.units import MIB, compression, mib


def inspect_file(path) -> dict:
    """Float32 size, true quantized size, bytes on disk, order-0 bound, mean bits, per layer.

    Keys: ``path``, ``kind``, ``version`` (artifacts), ``float_mb``, ``true_mb``,
    ``file_bytes``, ``compression`` (float_mb over the file's MB), ``bound_mb`` (order-0
    entropy bound, see ``quant.summary``; None for float checkpoints), ``bound_ratio``
    (file bytes over the bound), ``mean_bits``, ``layers`` (each: ``name``, ``numel``,
    ``bits_mean``, ``bits_min``, ``bits_max``, ``mb`` (true size), ``bound_mb``, ``disk_bytes``
    (the bytes its coded streams take in a version-2 artifact, else None)).
    """
    path = Path(path)
    kind, obj = read_file(path)
    file_bytes = path.stat().st_size
    if kind == "float":
        layers = [
            {
                "name": name,
                "numel": t.numel(),
                "bits_mean": t.element_size() * 8.0,
                "bits_min": t.element_size() * 8,
                "bits_max": t.element_size() * 8,
                "mb": t.numel() * t.element_size() / MIB,
            }
            for name, t in obj.items()
            if t.is_floating_point()
        ]
        float_mb = sum(row["numel"] for row in layers) * 4 / MIB
        summary = {
            "float_mb": float_mb,
            "true_mb": sum(r["mb"] for r in layers),
            "mean_bits": None,
            "grid": None,
            "bound_mb": None,
            "layers": layers,
        }
    else:
        from diffq_cli.quant.summary import summarize_state

        summary = summarize_state(obj["state"] if kind == "artifact" else obj)
        disk = obj.get("disk_bytes", {}) if kind == "artifact" else {}
        for layer in summary["layers"]:
            layer["disk_bytes"] = disk.get(layer["name"])
    summary.update(
        path=str(path),
        kind=kind,
        file_bytes=file_bytes,
        compression=compression(summary["float_mb"], mib(file_bytes)),
        bound_ratio=(mib(file_bytes) / summary["bound_mb"]) if summary.get("bound_mb") else None,
    )
    if kind == "artifact":
        summary["version"] = obj["version"]
        summary["model"] = obj["model"].get("name")
        summary["metrics"] = obj.get("metrics", {})
    return summary
