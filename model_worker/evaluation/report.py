"""The evaluation's report: one JSON-ready dict (what --json prints), and the text a person reads, made from it,
so both always say the same thing."""

from __future__ import annotations

import itertools
import unicodedata
from collections.abc import Sequence
from typing import Any

from model_worker.evaluation.dataset import Dataset
from model_worker.evaluation.metrics import confusions, mcnemar_exact, per_label, top_k_accuracy
from model_worker.evaluation.run import TOP_K, ModelRun

FIRST_FAILURES = 5  # unreadable pictures listed by path (the count covers them all)
TEXT_CONFUSIONS = 10  # confusions in the text report (JSON has them all)


def _round(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else round(x, digits)


def _model_report(run: ModelRun, dataset: Dataset) -> dict[str, Any]:
    truths = [item.label for item in dataset.items]
    report: dict[str, Any] = {
        "model": run.model,
        "answered": run.answered,
        "top1": _round(top_k_accuracy(truths, run.ranked, 1)),
        "top5": _round(top_k_accuracy(truths, run.ranked, TOP_K)),
        "seconds": round(run.seconds, 3),
        "images_per_second": _round(run.images_per_second, 2),
        "per_label": [
            {
                "label": f.label,
                "precision": _round(f.precision),
                "recall": _round(f.recall),
                "support": f.support,
                "predicted": f.predicted,
            }
            for f in per_label(truths, run.ranked, dataset.labels)
        ],
        "confusions": [{"true": t, "predicted": p, "count": n} for t, p, n in confusions(truths, run.ranked)],
        "unreadable": {
            "count": len(run.failures),
            "first": [{"path": f.path, "error": f.code, "message": f.message} for f in run.failures[:FIRST_FAILURES]],
        },
    }
    if run.variants:
        report["templates"] = [
            {"variant": v.name, "templates": list(v.templates), "top1": _round(v.top1), "top5": _round(v.top5)}
            for v in run.variants
        ]
    return report


def _comparison(i: int, a: ModelRun, j: int, b: ModelRun, dataset: Dataset) -> dict[str, Any]:
    # paired: only the pictures both models answered
    both = [k for k, (x, y) in enumerate(zip(a.ranked, b.ranked)) if x is not None and y is not None]
    a_right = [a.ranked[k][0] == dataset.items[k].label for k in both]  # type: ignore[index]
    b_right = [b.ranked[k][0] == dataset.items[k].label for k in both]  # type: ignore[index]
    test = mcnemar_exact(a_right, b_right)
    top1_a = sum(a_right) / len(both) if both else None
    top1_b = sum(b_right) / len(both) if both else None
    return {
        "a": i,
        "b": j,
        "model_a": a.model,
        "model_b": b.model,
        "pictures": len(both),
        "top1_a": _round(top1_a),
        "top1_b": _round(top1_b),
        "difference": _round(None if top1_a is None or top1_b is None else top1_b - top1_a),
        "only_a_right": test.only_a,
        "only_b_right": test.only_b,
        "p_value": _round(test.p_value, 8),
    }


def build_report(dataset_path: str, dataset: Dataset, runs: Sequence[ModelRun]) -> dict[str, Any]:
    return {
        "dataset": dataset_path,
        "images": len(dataset.items),
        "labels": list(dataset.labels),
        "top_k": min(TOP_K, len(dataset.labels)),
        "skipped": dict(sorted(dataset.skipped.items())),
        "models": [_model_report(run, dataset) for run in runs],
        "comparisons": [
            _comparison(i, a, j, b, dataset) for (i, a), (j, b) in itertools.combinations(enumerate(runs), 2)
        ],
    }


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - _width(text))


def _pct(x: float | None) -> str:
    return "    -" if x is None else f"{x * 100:5.1f}%"


def format_text(report: dict[str, Any]) -> str:
    skipped = ", ".join(f"{n} {why}" for why, n in report["skipped"].items()) or "none"
    lines = [
        f"dataset {report['dataset']}: {report['images']} images, {len(report['labels'])} labels (skipped: {skipped})"
    ]
    several = len(report["models"]) > 1
    k = report["top_k"]
    for number, model in enumerate(report["models"], 1):
        lines.append("")
        lines.append(f"[{number}] {model['model']}" if several else f"model {model['model']}")
        speed = model["images_per_second"]
        lines.append(
            f"  top-1 {_pct(model['top1'])}   top-{k} {_pct(model['top5'])}   "
            f"{model['answered']} answered, {'-' if speed is None else f'{speed:.1f}'} images/s"
        )
        width = max([_width("label")] + [_width(row["label"]) for row in model["per_label"]])
        lines.append(f"  {_pad('label', width)}  precision  recall  support")
        for row in model["per_label"]:
            lines.append(
                f"  {_pad(row['label'], width)}     {_pct(row['precision'])}  {_pct(row['recall'])}  {row['support']:7d}"
            )
        if model["confusions"]:
            lines.append("  most frequent confusions (true → predicted):")
            for c in model["confusions"][:TEXT_CONFUSIONS]:
                lines.append(f"    {c['true']} → {c['predicted']}: {c['count']}")
        else:
            lines.append("  no confusions")
        unreadable = model["unreadable"]
        if unreadable["count"]:
            lines.append(f"  {unreadable['count']} image(s) could not be read:")
            for f in unreadable["first"]:
                lines.append(f"    {f['path']}: {f['error']}")
            if unreadable["count"] > len(unreadable["first"]):
                lines.append(f"    … and {unreadable['count'] - len(unreadable['first'])} more")
        if "templates" in model:
            width = max([_width("variant")] + [_width(v["variant"]) for v in model["templates"]])
            lines.append("  templates (the same image embeddings, labels embedded per variant):")
            lines.append(f"    {_pad('variant', width)}  {'top-1':>6}  {f'top-{k}':>6}")
            for v in model["templates"]:
                lines.append(f"    {_pad(v['variant'], width)}  {_pct(v['top1'])}  {_pct(v['top5'])}")
    for c in report["comparisons"]:
        a, b, diff = c["a"] + 1, c["b"] + 1, c["difference"]
        points = "-" if diff is None else f"{diff * 100:+.1f}"
        lines.append("")
        lines.append(
            f"[{a}] vs [{b}] on the {c['pictures']} images both answered: top-1 {_pct(c['top1_a']).strip()} vs "
            f"{_pct(c['top1_b']).strip()} ([{b}] − [{a}]: {points} points); McNemar exact p = {c['p_value']:.4g} "
            f"(discordant: only [{a}] right {c['only_a_right']}, only [{b}] right {c['only_b_right']})"
        )
    return "\n".join(lines)
