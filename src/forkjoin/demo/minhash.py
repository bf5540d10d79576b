"""The near-duplicate workload: MinHash and HyperLogLog sketches of documents, in pure Python.

A realistic CPU-bound job with no C extension doing the work: every document is cut into word
3-grams ("shingles"), each shingle hashed with 64-bit FNV-1a byte by byte, and the document
summarised by

- a MinHash signature (the minimum of ``NUM_PERMUTATIONS`` random linear hashes over its
  shingles). Signatures of two documents agree in a fraction of places equal, on average, to the
  Jaccard similarity of their shingle sets, so near-duplicates can be found without comparing
  every pair of documents (locality-sensitive hashing: bands of the signature as bucket keys);
- a HyperLogLog sketch of its shingles. Sketches merge by a register-wise maximum, so the
  corpus's number of distinct shingles is a map-reduce: sketch each document, merge, estimate.

The corpus is generated from a fixed seed, with some documents planted as edited copies of earlier
ones, so the demo can check not only that the parallel results equal the serial ones but also
that the planted duplicates are found.
"""

from __future__ import annotations

import math
import random
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

# -- the kernels (run in workers; must be module-level functions so workers can import them) --

MASK64 = (1 << 64) - 1
FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
# A Mersenne prime: the modulus of the MinHash permutations (a * x + b) mod P.
MERSENNE_61 = (1 << 61) - 1
# Signature length: more permutations estimate Jaccard better (error ~ 1/sqrt(n)) and cost more.
NUM_PERMUTATIONS = 64
# LSH: the signature is cut into BANDS bands of ROWS rows; documents sharing a whole band are
# candidates, so a pair with Jaccard s is found with probability 1 - (1 - s**ROWS)**BANDS:
# 0.99998 at s = 0.5, 0.03 at s = 0.03 (two unrelated generated documents).
BANDS, ROWS = 32, 2
# Candidates whose estimated Jaccard similarity reaches this are reported as near-duplicates.
DUPLICATE_THRESHOLD = 0.5
SHINGLE_WORDS = 3
# The permutations are fixed, not drawn per process: every worker must use the same ones.
_PERMUTATION_SEED = 0x5EED
_perm_rng = random.Random(_PERMUTATION_SEED)
PERMUTATIONS = tuple(
    (_perm_rng.randrange(1, MERSENNE_61), _perm_rng.randrange(0, MERSENNE_61))
    for _ in range(NUM_PERMUTATIONS)
)
del _perm_rng


def fnv1a_64(data: bytes) -> int:
    """64-bit FNV-1a. Python's own ``hash`` of a str is salted per process, so it would give
    every worker different answers; this one is the same everywhere."""
    h = FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * FNV_PRIME) & MASK64
    return h


def shingle_hashes(text: str) -> set[int]:
    """The hashed word 3-grams of a document (lower-cased, punctuation stripped)."""
    words = re.findall(r"[a-z]+", text.lower())
    n = SHINGLE_WORDS
    return {
        fnv1a_64(" ".join(words[i : i + n]).encode()) % MERSENNE_61
        for i in range(len(words) - n + 1)
    }


def minhash_signature(text: str) -> tuple[int, ...]:
    """The document's MinHash signature: one minimum per permutation (~10 ms per document)."""
    hashes = shingle_hashes(text)
    if not hashes:
        return (MERSENNE_61,) * NUM_PERMUTATIONS
    p = MERSENNE_61
    return tuple(min([(a * h + b) % p for h in hashes]) for a, b in PERMUTATIONS)


# HyperLogLog: 2**HLL_BITS registers; the relative error of the distinct count is
# ~1.04 / sqrt(2**HLL_BITS) = 3.3%, and a sketch is 1 KB however large the corpus.
HLL_BITS = 10
HLL_REGISTERS = 1 << HLL_BITS


def _mix64(h: int) -> int:
    """splitmix64's finaliser: spreads FNV's bits so that every bit of the hash is usable."""
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & MASK64
    return h ^ (h >> 31)


def shingle_sketch(text: str) -> bytes:
    """A HyperLogLog sketch of the document's distinct word 3-grams (~1.5 ms per document)."""
    registers = bytearray(HLL_REGISTERS)
    rest_bits = 64 - HLL_BITS
    for shingle in shingle_hashes(text):
        h = _mix64(shingle)
        slot = h & (HLL_REGISTERS - 1)
        rank = rest_bits - (h >> HLL_BITS).bit_length() + 1  # position of the first 1 bit
        if rank > registers[slot]:
            registers[slot] = rank
    return bytes(registers)


def merge_sketches(a: bytes, b: bytes) -> bytes:
    """The sketch of the union: register-wise maximum (commutative, so any order gives the same
    bytes)."""
    return bytes(map(max, a, b))


EMPTY_SKETCH = bytes(HLL_REGISTERS)


def estimate_distinct(sketch: bytes) -> float:
    """HyperLogLog's estimate of the number of distinct items (Flajolet et al., 2007), with
    linear counting for small sets."""
    m = len(sketch)
    alpha = 0.7213 / (1 + 1.079 / m)
    estimate = alpha * m * m / sum(2.0**-r for r in sketch)
    zeros = sketch.count(0)
    if estimate <= 2.5 * m and zeros:
        return m * math.log(m / zeros)
    return estimate


# -- generated data -------------------------------------------------------------------------------

_ONSETS = "b c d f g h k l m n p r s t v w br ch cl dr fl gr pl pr sh st th tr".split()
_NUCLEI = "a e i o u a e i o u ai ea ee ou".split()
_CODAS = ["", "", "", "", "", "n", "r", "s", "t", "l", "nd", "st"]
VOCABULARY_SIZE = 4000
# One document in this many is an edited copy of an earlier one (a planted near-duplicate).
DUPLICATE_EVERY = 10
# Fraction of a planted duplicate's words that are replaced.
EDIT_FRACTION = 0.03


@dataclass(frozen=True)
class Corpus:
    documents: list[str]
    copies: dict[int, int]  # planted near-duplicate's index -> index of the original it copies

    @property
    def nbytes(self) -> int:
        return sum(len(d) for d in self.documents)

    def duplicate_pairs(self) -> set[tuple[int, int]]:
        """Every pair (i, j), i < j, of documents in the same family: an original and its
        copies, and two copies of the same original."""
        families: dict[int, list[int]] = defaultdict(list)
        for copy, original in self.copies.items():
            families[original].append(copy)
        pairs: set[tuple[int, int]] = set()
        for original, copies in families.items():
            members = sorted([original, *copies])
            pairs.update(
                (members[i], members[j])
                for i in range(len(members))
                for j in range(i + 1, len(members))
            )
        return pairs


def _vocabulary(rng: random.Random) -> list[str]:
    words: set[str] = set()
    while len(words) < VOCABULARY_SIZE:
        syllables = rng.choice((1, 1, 1, 2, 2, 2, 3))
        words.add(
            "".join(
                rng.choice(_ONSETS) + rng.choice(_NUCLEI) + rng.choice(_CODAS)
                for _ in range(syllables)
            )
        )
    ordered = sorted(words)  # a set's order depends on the process's hash seed
    rng.shuffle(ordered)  # ranks (Zipf frequencies) at random, not alphabetical
    return ordered


def _sentences(words: list[str]) -> str:
    out, start = [], 0
    while start < len(words):
        length = 8 + (start * 7 + len(words)) % 13  # sentence lengths 8..20, deterministic
        sentence = words[start : start + length]
        out.append(" ".join(sentence).capitalize() + ".")
        start += length
    return " ".join(out)


def make_corpus(n: int, seed: int, words_per_document: tuple[int, int] = (250, 400)) -> Corpus:
    """``n`` documents of Zipf-distributed pseudo-words; every ``DUPLICATE_EVERY``-th one an
    edited copy of a random earlier original. Same seed, same corpus, on any machine."""
    rng = random.Random(seed)
    vocabulary = _vocabulary(rng)
    cumulative, running = [], 0.0
    for rank in range(1, len(vocabulary) + 1):
        running += 1.0 / rank**1.1
        cumulative.append(running)
    documents: list[list[str]] = []
    originals: list[int] = []
    copies: dict[int, int] = {}
    for index in range(n):
        if originals and index % DUPLICATE_EVERY == DUPLICATE_EVERY - 1:
            source = rng.choice(originals)
            words = list(documents[source])
            for _ in range(max(1, int(len(words) * EDIT_FRACTION))):
                words[rng.randrange(len(words))] = rng.choice(vocabulary)
            copies[index] = source
        else:
            length = rng.randint(*words_per_document)
            words = rng.choices(vocabulary, cum_weights=cumulative, k=length)
            originals.append(index)
        documents.append(words)
    return Corpus([_sentences(words) for words in documents], copies)


# -- after the parallel step: find the near-duplicates ----------------------------------------


def estimated_jaccard(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


def near_duplicates(signatures: Iterable[tuple[int, ...]]) -> set[tuple[int, int]]:
    """Pairs (i, j), i < j, whose signatures share an LSH band and estimate Jaccard >= 0.5."""
    signatures = list(signatures)
    buckets: dict[tuple[int, tuple[int, ...]], list[int]] = defaultdict(list)
    for index, signature in enumerate(signatures):
        for band in range(BANDS):
            buckets[band, signature[band * ROWS : (band + 1) * ROWS]].append(index)
    candidates = {
        (members[i], members[j])
        for members in buckets.values()
        if len(members) > 1
        for i in range(len(members))
        for j in range(i + 1, len(members))
    }
    return {
        pair
        for pair in candidates
        if estimated_jaccard(signatures[pair[0]], signatures[pair[1]]) >= DUPLICATE_THRESHOLD
    }
