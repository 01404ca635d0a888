"""Ingest throughput against its limit: the raw embedding throughput of the same chunks.

Both are measured in the same run on the same embedder: raw is `Embedder.embed` over exactly the
texts the pipeline embeds (chunks with their heading prefix), in one call, nothing else. Ingest is
the full `RagService.ingest_paths` (discover, read, hash, load, chunk, embed, BM25, upsert into
Qdrant Edge, catalog) into a fresh collection. Each round times raw before and after one ingest
and compares the ingest with their mean; the median over rounds is reported, so drifting machine
load does not favour either side. Also timed: the re-run (every
file unchanged) and deleting every document.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from appliance.cli import UserError
from appliance.commands.eval import REPO_ROOT, add_settings_arguments, settings_from_args

TENANT, COLLECTION = "bench", "bench"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="*", type=Path, help="files or folders (default: the squad-rag docs)")
    p.add_argument("--copies", type=int, default=1, help="ingest N copies of the corpus (distinct files)")
    p.add_argument("--rounds", type=int, default=3, help="raw/ingest alternations; the median ratio is kept")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", action="store_true")
    add_settings_arguments(p)


def run(args: argparse.Namespace) -> int:
    from rag import RagService

    sources = args.paths or [REPO_ROOT.parent / "shared" / "data" / "squad-rag" / "docs"]
    if args.copies < 1 or args.rounds < 1 or any(not p.exists() for p in sources):
        raise UserError("bench ingest needs existing paths, --copies >= 1 and --rounds >= 1")
    with tempfile.TemporaryDirectory(prefix="appliance-bench-ingest-") as tmp:
        corpus = _make_corpus(sources, Path(tmp) / "corpus", args.copies)
        service = RagService(Path(tmp) / "data", device=args.device, settings=settings_from_args(args))
        try:
            result = _measure(service, corpus, args.rounds)
        finally:
            service.close()
    _report(result, args.json)
    return 0


def _make_corpus(sources: list[Path], target: Path, copies: int) -> Path:
    """`copies` copies of every input file, each a distinct document (its own path)."""
    files = [
        f for s in sources for f in ([s] if s.is_file() else sorted(p for p in s.rglob("*") if p.is_file()))
    ]
    for copy in range(copies):
        folder = target / f"copy{copy}"
        folder.mkdir(parents=True)
        for index, path in enumerate(files):
            shutil.copyfile(path, folder / f"{index:04d}-{path.name}")
    return target


def _measure(service, corpus: Path, rounds: int) -> dict:
    """Alternate raw and ingest `rounds` times (each ingest into a fresh collection) and keep the
    median ratio: on a shared machine, load drifts between passes, and alternation cancels it."""
    texts = _chunk_inputs(service, corpus)
    service.embedder.embed(texts[:16])  # warm-up: first calls allocate and tune
    raw_s, ingest_s, ratios = [], [], []
    for round_index in range(rounds):
        before = _time(lambda: service.embedder.embed(texts))
        summary = service.ingest_paths([corpus], TENANT, f"{COLLECTION}-{round_index}")
        after = _time(lambda: service.embedder.embed(texts))
        if summary.num_failed or summary.num_chunks != len(texts):
            raise UserError(
                f"bench corpus did not ingest cleanly: {summary.num_failed} failed, "
                f"{summary.num_chunks} chunks vs {len(texts)} expected"
            )
        raw_s.append((before + after) / 2)
        ingest_s.append(summary.seconds)
        ratios.append(raw_s[-1] / summary.seconds)
    last = f"{COLLECTION}-{rounds - 1}"
    rerun = service.ingest_paths([corpus], TENANT, last)
    docs = service.list_documents(TENANT, last)
    delete_s = _time(lambda: [service.delete_document(TENANT, last, d.doc_id) for d in docs])
    raw, ingest = statistics.median(raw_s), statistics.median(ingest_s)
    return {
        "device": service.embedder.device,
        "files": len(docs),
        "chunks": len(texts),
        "rounds": rounds,
        "raw_chunks_per_s": round(len(texts) / raw, 2),
        "ingest_chunks_per_s": round(len(texts) / ingest, 2),
        "ingest_vs_raw": round(statistics.median(ratios), 4),
        "ingest_vs_raw_per_round": [round(r, 4) for r in ratios],
        "rerun_s": round(rerun.seconds, 3),
        "rerun_skipped": rerun.num_skipped,
        "delete_all_s": round(delete_s, 3),
        "ingest_files_per_s": round(len(docs) / ingest, 2),
        "delete_files_per_s": round(len(docs) / max(delete_s, 1e-9), 2),
    }


def _chunk_inputs(service, corpus: Path) -> list[str]:
    """Exactly the texts the pipeline will embed, produced by the service's own loader and chunker."""
    from rag.discovery import discover
    from rag.ids import make_doc_id
    from rag.ingest import embed_input
    from rag.loaders import load_document

    files, _ = discover([corpus])
    texts = []
    for found in files:
        loaded = load_document(str(found.path), found.path.read_bytes())
        doc_id = make_doc_id(TENANT, COLLECTION, str(found.path))
        for chunk in service.chunker.chunk(loaded.text, doc_id, str(found.path), loaded.title):
            texts.append(embed_input(chunk, service.settings.embed_headings))
    return texts


def _time(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _report(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
        return
    print(f"ingest bench on {result['device']}: {result['files']} files, {result['chunks']} chunks")
    print(f"  raw embedding (limit): {result['raw_chunks_per_s']:8.2f} chunks/s")
    print(
        f"  ingest (end to end):   {result['ingest_chunks_per_s']:8.2f} chunks/s"
        f"  = {100 * result['ingest_vs_raw']:.1f}% of raw"
    )
    print(f"  re-run, all unchanged: {result['rerun_s']:.3f} s ({result['rerun_skipped']} skipped)")
    print(
        f"  delete every document: {result['delete_all_s']:.3f} s "
        f"({result['delete_files_per_s']:.1f} files/s vs ingest {result['ingest_files_per_s']:.2f} files/s)"
    )
