"""Demo section 1: find near-duplicate documents in a generated corpus.

Serial: plain loops over the documents. Parallel, on the demo's shared pool: ``map`` of the
MinHash kernel (an ordered list of signatures) and ``map_reduce`` of the HyperLogLog kernel
(merged into one corpus sketch as results arrive). Both ways must give identical results; then
the signatures do the real job, finding the planted near-duplicates.
"""

from __future__ import annotations

import functools

from .minhash import (
    EMPTY_SKETCH,
    estimate_distinct,
    make_corpus,
    merge_sketches,
    minhash_signature,
    near_duplicates,
    shingle_sketch,
)
from .runner import DemoContext, SectionReport, Step, format_bytes, format_count, format_seconds

# Documents in a default run (~7-9 ms of MinHash plus ~1.5 ms of sketching each: ~5 s of serial
# work, ~8 s for the whole section on 2 cores) and in a --quick one (~1 s serial).
DEFAULT_DOCUMENTS = 600
QUICK_DOCUMENTS = 100


class NearDuplicates:
    name = "near-duplicates"
    title = "Near-duplicate documents: MinHash + HyperLogLog over word 3-grams, pure Python"

    def run(self, ctx: DemoContext) -> SectionReport:
        n = ctx.size(DEFAULT_DOCUMENTS, QUICK_DOCUMENTS)
        corpus, seconds = ctx.timed(make_corpus, n, ctx.seed)
        docs = corpus.documents
        ctx.say(
            f"    data      {format_count(n)} generated documents, {format_bytes(corpus.nbytes)}, "
            f"{len(corpus.copies)} planted near-copies ({format_seconds(seconds)})"
        )

        serial_signatures, serial_map = ctx.timed(lambda: [minhash_signature(d) for d in docs])
        serial_sketch, serial_reduce = ctx.timed(
            lambda: functools.reduce(merge_sketches, map(shingle_sketch, docs), EMPTY_SKETCH)
        )
        ctx.say(
            f"    serial    map {format_seconds(serial_map)}, "
            f"map_reduce {format_seconds(serial_reduce)}"
        )

        # The same calls as fj.map / fj.map_reduce, on the section's pool (so that its stats
        # describe just this work).
        pool, meter = ctx.pool, ctx.meter()
        chunksize = ctx.chunksize
        signatures, parallel_map = ctx.timed(
            pool.map_list, minhash_signature, docs, chunksize=chunksize
        )
        sketch, parallel_reduce = ctx.timed(
            pool.map_reduce, shingle_sketch, docs, merge_sketches, EMPTY_SKETCH, chunksize=chunksize
        )
        ctx.say(
            f"    parallel  map {format_seconds(parallel_map)}, "
            f"map_reduce {format_seconds(parallel_reduce)}"
        )

        found = near_duplicates(signatures)
        expected = corpus.duplicate_pairs()
        hits = len(found & expected)
        report = SectionReport(self.name, self.title)
        report.checks = [
            (
                f"map == serial loop ({len(signatures)} MinHash signatures)",
                signatures == serial_signatures,
            ),
            (
                f"map_reduce == functools.reduce ({len(sketch)}-register corpus sketch)",
                sketch == serial_sketch,
            ),
        ]
        report.findings = [
            f"{len(found)} near-duplicate pairs found of {len(expected)} expected "
            f"from {len(corpus.copies)} planted copies "
            f"(precision {hits / len(found) if found else 1:.0%}, "
            f"recall {hits / len(expected) if expected else 1:.0%})",
            f"~{format_count(estimate_distinct(sketch))} distinct word 3-grams in the corpus "
            f"(HyperLogLog, +-3%)",
        ]
        workers = ctx.workers
        report.steps = [
            Step("map(minhash_signature)", n, serial_map, parallel_map, workers),
            Step("map_reduce(shingle_sketch)", n, serial_reduce, parallel_reduce, workers),
        ]
        report.pool = meter.figures(parallel_map + parallel_reduce)
        return report
