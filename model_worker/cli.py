"""`python -m model_worker classify | bench | serve | similarity | eval | make-checkpoint`.

Exit codes: 0 every input got an answer (some answers may be errors); 1 an input
got no answer (a bug); 2 usage, configuration or model-load error, explained in
one line on stderr.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import unicodedata
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NoReturn

from model_worker.serving.startup import load_engine, quiet_libraries
from model_worker.settings import UsageError, resolve_config
from wakeru.config import Config, ConfigError
from wakeru.labels import LabelError, label_name, parse_labels
from wakeru.protocol import ClassifyRequest, ClassifyResult, ErrorCode, unpack_embedding

log = logging.getLogger("model_worker")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line instead of argparse's usage block
        raise UsageError(f"{message} (see `python -m model_worker {self.prog.split()[-1]} --help`)")


def _add_model_options(p: argparse.ArgumentParser, *, several: bool = False) -> None:
    if several:  # eval compares models: --model A --model B
        p.add_argument(
            "--model",
            action="append",
            metavar="ID_OR_PATH",
            help="hub id or local directory; repeat to compare models on the same images (default: model.id)",
        )
    else:
        p.add_argument(
            "--model", metavar="ID_OR_PATH", help="hub id or local directory (default: model.id from config)"
        )
    p.add_argument("--config", metavar="FILE", help="config file (default: $WAKERU_CONFIG or ./config.yaml)")
    p.add_argument("--device", help="override model.device: auto, cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], help="override model.dtype")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="model_worker", description="Wakeru model worker: Japanese zero-shot image classification.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    c = sub.add_parser("classify", help="classify image files against a label set")
    _add_model_options(c)
    group = c.add_mutually_exclusive_group()
    group.add_argument(
        "--labels", help='labels separated by commas, 、 or newlines, e.g. "犬,猫,象" (default: labels.default)'
    )
    group.add_argument("--label-file", metavar="FILE", help="file with labels, one per line or comma-separated")
    c.add_argument("--top-k", type=int, default=3, help="how many labels to show per image (default 3)")
    c.add_argument("--json", action="store_true", help="one JSON object per input on stdout")
    c.add_argument("images", nargs="+", metavar="IMAGE")

    b = sub.add_parser("bench", help="measure naive loop vs engine vs vision tower alone")
    _add_model_options(b)
    b.add_argument("--images", type=int, default=64, help="images through the engine (default 64)")
    b.add_argument(
        "--naive-images", type=int, default=None, help="images through the naive loop (default min(images, 8))"
    )
    b.add_argument(
        "--labels", default="20", help="label count taken from the config's label sets, or label text (default 20)"
    )
    b.add_argument("--batch", type=int, default=None, help="override worker.max_batch")
    b.add_argument(
        "--image-size", default="1920x1440", help="photo size of the generated JPEGs, WxH (default 1920x1440)"
    )
    b.add_argument(
        "--new-label-sets",
        type=int,
        default=0,
        metavar="N",
        help="also measure the images' latency while N never-seen label sets arrive (default 0: off)",
    )
    b.add_argument("--new-set-size", type=int, default=100, metavar="L", help="labels per new set (default 100)")
    b.add_argument(
        "--embed",
        action="store_true",
        help="also run the engine with embed on (the image index's embeddings) and report what it costs",
    )
    b.add_argument(
        "--embed-rounds", type=int, default=2, help="--embed: runs with embed off and on, alternating (default 2)"
    )
    b.add_argument("--json", action="store_true", help="print one JSON object")

    s = sub.add_parser("serve", help="serve the Redis request stream (worker.transport: redis) until SIGTERM")
    _add_model_options(s)
    s.add_argument("--redis-url", help="override worker.redis_url, e.g. redis://10.0.0.5:6379/0")
    s.add_argument("--json-logs", action="store_true", help="one JSON object per log line (service.log_format)")

    sim = sub.add_parser(
        "similarity", help="cosine similarity of image pairs (to calibrate index.repost_threshold on your pictures)"
    )
    _add_model_options(sim)
    sim.add_argument("--json", action="store_true", help="one JSON object per pair on stdout")
    sim.add_argument("images", nargs="+", metavar="IMAGE", help="two or more image files; every pair is compared")

    e = sub.add_parser("eval", help="accuracy of a model (or several) on a labelled folder or CSV of images")
    _add_model_options(e, several=True)
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--plot", metavar="FILE.png", help="also draw the confusion matrix as a heat map (PNG)")
    e.add_argument(
        "--templates",
        action="store_true",
        help="also compare the configured template ensemble, each template alone, named sets and the bare label",
    )
    e.add_argument(
        "dataset",
        metavar="DATASET",
        help="a folder with one sub-folder per label (optional labels.txt: folder<TAB>label), or a CSV of path,label",
    )

    m = sub.add_parser("make-checkpoint", help="write a random-weight local checkpoint (no hub needed)")
    m.add_argument(
        "--family",
        required=True,
        choices=["siglip", "siglip2", "clip", "metaclip2", "japanese-stable-clip", "onnx-clip"],
        help="onnx-clip: a MetaCLIP 2 exported to ONNX in Immich's layout (needs onnx and onnxruntime)",
    )
    m.add_argument("--preset", default="base", choices=["tiny", "small", "base", "large"])
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("out", metavar="DIR")
    return parser


def _labels_from_args(args: argparse.Namespace, config: Config) -> tuple[str, ...]:
    """The labels' names: the label rules as in Discord, where 犬=🐕 is the label 犬 with an emoji."""
    limits = dict(max_count=config.labels.max_count, max_length=config.labels.max_length)
    if args.label_file:
        try:
            text = Path(args.label_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read label file {args.label_file}: {e}") from None
        labels = parse_labels(text, **limits)
    elif args.labels is not None:
        labels = parse_labels(args.labels, **limits)
    else:
        labels = config.labels.default
    return tuple(label_name(label) for label in labels)


def _read_inputs(paths: Sequence[str], max_bytes: int) -> Iterator[tuple[str, bytes | ClassifyResult]]:
    for i, path in enumerate(paths):
        rid = str(i)
        try:
            with open(path, "rb") as f:
                data = f.read(max_bytes + 1)  # never read more than the limit + 1 byte
        except IsADirectoryError:
            yield path, ClassifyResult.failure(rid, ErrorCode.UNREADABLE, f"{path} is a directory, not an image file")
            continue
        except OSError as e:
            yield path, ClassifyResult.failure(rid, ErrorCode.UNREADABLE, f"cannot read {path}: {e.strerror or e}")
            continue
        yield path, data


def _classify_stream(
    engine, paths: Sequence[str], labels: tuple[str, ...], top_k: int, max_bytes: int
) -> Iterator[tuple[str, ClassifyResult]]:
    """(path, result) in input order; unreadable files are answered without the engine."""
    order: list[tuple[str, ClassifyResult | None]] = []

    def requests():
        for i, (path, item) in enumerate(_read_inputs(paths, max_bytes)):
            if isinstance(item, ClassifyResult):
                order.append((path, item))
            else:
                order.append((path, None))
                yield ClassifyRequest(id=str(i), image=item, labels=labels, top_k=top_k)

    # a small window: each request in flight holds its file's bytes (up to images.max_bytes)
    results = engine.stream(requests(), window=2 * engine.max_batch)
    emitted = 0
    for result in results:
        # emit everything up to and including this engine result, in input order
        while emitted < len(order):
            path, ready = order[emitted]
            if ready is not None:
                yield path, ready
                emitted += 1
                continue
            order[emitted] = (path, result)
            yield path, result
            emitted += 1
            break
    for path, ready in order[emitted:]:
        assert ready is not None  # every engine result has filled its input's place by now
        yield path, ready


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - _width(text))


NONE_FITS = "(none of the labels fits: even the best one is below model.match_threshold)"


def format_table(path: str, result: ClassifyResult) -> str:
    """Share and bar per label; `match` where the model gives one, and a mark on labels that do not fit."""
    if result.error is not None:  # not result.ok
        return f"{path}\n  error {result.error.value}: {result.message}"
    width = max((_width(s.label) for s in result.top), default=0)
    lines = [path]
    for rank, s in enumerate(result.top, 1):
        bar = "█" * round(s.score * 20)
        match = "" if s.match is None else f"  match {s.match:6.1%}{'' if s.fits is not False else ' ✗'}"
        lines.append(f"  {rank}. {_pad(s.label, width)}  {s.score * 100:5.1f}%  {_pad(bar, 20)}{match}".rstrip())
    if result.none_fits:
        lines.append(f"  {NONE_FITS}")
    return "\n".join(lines)


def result_json(path: str, result: ClassifyResult) -> dict:
    if result.error is not None:  # not result.ok
        return {"image": path, "error": result.error.value, "message": result.message}
    top = []
    for s in result.top:
        item = {"label": s.label, "score": round(s.score, 6)}
        if s.match is not None:
            item.update(match=round(s.match, 6), fits=s.fits)
        top.append(item)
    return {"image": path, "top": top, "none_fits": result.none_fits}


def cmd_classify(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise UsageError("--top-k must be at least 1")
    config = resolve_config(args)
    try:
        labels = _labels_from_args(args, config)
    except LabelError as e:
        raise UsageError(f"labels: {e}") from None
    engine = load_engine(config)
    answered = 0
    try:
        for path, result in _classify_stream(engine, args.images, labels, args.top_k, config.images.max_bytes):
            if args.json:
                print(json.dumps(result_json(path, result), ensure_ascii=False), flush=True)
            else:
                print(format_table(path, result), flush=True)
            answered += 1
    finally:
        engine.close()
    return 0 if answered == len(args.images) else 1


def cmd_serve(args: argparse.Namespace) -> int:
    from model_worker.serving.redis_consumer import serve_forever
    from model_worker.serving.startup import armed_faults
    from wakeru.logs import setup_logging

    config = resolve_config(args)
    if args.redis_url:
        config = config.with_overrides(worker={"redis_url": args.redis_url})
    fmt = "json" if args.json_logs else config.service.log_format
    setup_logging(fmt, logging.DEBUG if args.verbose else logging.INFO, process="worker")
    faults = armed_faults()
    if faults is not None:
        faults.before_load()
    engine = load_engine(config)
    if faults is not None:
        faults.install(engine)
    try:
        return serve_forever(config, engine, faults)
    finally:
        engine.close(timeout=10)


def cmd_similarity(args: argparse.Namespace) -> int:
    """Every pair's cosine similarity, most similar first: near-duplicates (resized, re-saved copies)
    should score above index.repost_threshold, different pictures below it."""
    if len(args.images) < 2:
        raise UsageError("give at least two images to compare")
    config = resolve_config(args)
    engine = load_engine(config)
    vectors: dict[str, tuple[float, ...]] = {}
    failed = 0
    try:
        for i, (path, item) in enumerate(_read_inputs(args.images, config.images.max_bytes)):
            if not isinstance(item, ClassifyResult):
                item = engine.submit(ClassifyRequest(id=str(i), image=item, labels=(), embed=True)).result()
            if item.ok and item.embedding is not None:
                vectors[path] = unpack_embedding(item.embedding)
            else:
                failed += 1
                print(f"{path}: error {item.error.value if item.error else '?'}: {item.message}", file=sys.stderr)
    finally:
        engine.close()
    pairs = sorted(
        ((sum(x * y for x, y in zip(vectors[a], vectors[b])), a, b) for a, b in itertools.combinations(vectors, 2)),
        reverse=True,
    )
    for cosine, a, b in pairs:
        if args.json:
            print(json.dumps({"a": a, "b": b, "cosine": round(cosine, 6)}, ensure_ascii=False), flush=True)
        else:
            print(f"{cosine:.5f}  {a}  {b}", flush=True)
    return 1 if failed else 0


def _progress_line(model: str):
    """A progress line on stderr, only when a person watches it (a terminal): logs and pipes stay clean."""
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        end = "\n" if done >= total else ""
        print(f"\r{model}: {done}/{total} images", end=end, file=sys.stderr, flush=True)

    return show


def cmd_eval(args: argparse.Namespace) -> int:
    from model_worker.evaluation.dataset import DatasetError, read_dataset
    from model_worker.evaluation.report import build_report, format_text
    from model_worker.evaluation.run import evaluate

    models = args.model or [None]  # None: the configured model.id
    # one config per model (the same file, --device and --dtype), so each loads as `classify` would load it
    configs = [resolve_config(argparse.Namespace(**{**vars(args), "model": model})) for model in models]
    if args.plot and Path(args.plot).suffix.lower() != ".png":
        raise UsageError(f"--plot writes a PNG: give a file name ending in .png, not {args.plot}")
    limits = configs[0].labels
    try:
        dataset = read_dataset(args.dataset, max_count=limits.max_count, max_length=limits.max_length)
    except DatasetError as e:
        raise UsageError(f"dataset: {e}") from None
    runs = evaluate(
        [(config.model.id, config) for config in configs],
        dataset,
        load=load_engine,
        templates=args.templates,
        progress=_progress_line,
    )
    report = build_report(args.dataset, dataset, runs)
    if args.plot:
        from model_worker.evaluation.metrics import confusion_matrix
        from model_worker.evaluation.plot import write_plot

        truths = [item.label for item in dataset.items]
        panels = [
            (f"[{i}] {run.model}" if len(runs) > 1 else run.model, confusion_matrix(truths, run.ranked, dataset.labels))
            for i, run in enumerate(runs, 1)
        ]
        try:
            write_plot(args.plot, dataset.labels, panels)
        except OSError as e:
            raise UsageError(f"cannot write {args.plot}: {e.strerror or e}") from None
    if args.json:
        print(json.dumps(report, ensure_ascii=False), flush=True)
    else:
        print(format_text(report), flush=True)
    # every picture got an answer (some answers may be errors), as for classify
    return 0 if all(run.answered + len(run.failures) == len(dataset.items) for run in runs) else 1


def cmd_make_checkpoint(args: argparse.Namespace) -> int:
    from model_worker.devtools.checkpoints import build

    out = build(args.family, args.out, preset=args.preset, seed=args.seed)
    print(out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        quiet_libraries(getattr(args, "verbose", False))
        if args.command == "classify":
            return cmd_classify(args)
        if args.command == "bench":
            from model_worker.devtools.bench import cmd_bench

            return cmd_bench(args)
        if args.command == "similarity":
            return cmd_similarity(args)
        if args.command == "serve":
            return cmd_serve(args)
        if args.command == "eval":
            return cmd_eval(args)
        return cmd_make_checkpoint(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ConfigError as e:
        print("error: invalid configuration: " + "; ".join(str(e).splitlines()), file=sys.stderr)
        return 2
    except Exception as e:
        from model_worker.model.loading import ModelLoadError

        if isinstance(e, ModelLoadError):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
