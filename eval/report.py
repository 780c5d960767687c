"""The evaluation report as text for a terminal, and its precision-recall curves as a PNG."""

from pathlib import Path


def render_text(report: dict) -> str:
    """What ``python eval/coco.py`` prints: what was evaluated, COCO's summary, per-class AP, cost, speed."""
    what = report["evaluated"]
    if what["mode"] == "results":
        head = f"Scored {what['results_file']} against {what['annotations']}"
    else:
        head = (
            f"Evaluated {what['checkpoint']} (config {what['config']}, test short side {what['min_size']}, "
            f"long side at most {what['max_size']}) on {what['images']}"
        )
    lines = [head, f"{report['num_images']} images, {report['num_detections']} detections", "", report["summary"]]
    lines += [
        "",
        "Per-class AP (IoU .50:.95, all areas; '-': no ground truth):",
        *_per_class_table(report["per_class_ap"]),
    ]
    cost = report.get("cost")
    if cost:
        parts = ", ".join(f"{name} {macs / 1e9:.2f}" for name, macs in cost["macs_by_part"].items())
        size = "x".join(map(str, cost["input_size"]))
        lines += [
            "",
            f"Model cost at {size}: {cost['macs'] / 1e9:.2f} G multiply-adds ({parts}), "
            f"{cost['params'] / 1e6:.2f} M parameters",
        ]
    speed = report.get("speed")
    if speed and speed.get("ms_per_image") is not None:
        lines += [
            "",
            f"Speed: {speed['ms_per_image']:.1f} ms/image, {speed['images_per_second']:.2f} images/s (model only; "
            f"batch size {speed['batch_size']}, threads {speed['threads']}, {speed['device']}"
            + (f", {speed['world_size']} processes" if speed["world_size"] > 1 else "")
            + ")",
            f"       {speed['wall_ms_per_image']:.1f} ms/image, {speed['wall_images_per_second']:.2f} images/s "
            "wall clock, including data loading",
        ]
    return "\n".join(lines)


def _per_class_table(per_class: dict[str, float | None], columns: int = 3) -> list[str]:
    cells = [f"{name[:20]:<20} {'-' if ap is None else f'{ap:.3f}':>6}" for name, ap in per_class.items()]
    return ["  " + "    ".join(cells[i : i + columns]) for i in range(0, len(cells), columns)]


def plot_pr_curves(pr_curve: dict, path: str | Path, *, title: str) -> Path:
    """Precision against recall (averaged over categories) at each IoU in ``pr_curve``, written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    try:
        for iou, precision in pr_curve["precision"].items():
            ax.plot(pr_curve["recall"], precision, label=f"IoU {iou}")
        ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return Path(path)
