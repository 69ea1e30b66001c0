"""Whether the Kermany normal films ``IM-NNNN-...`` and ``NORMAL2-IM-NNNN-...`` that share a study number are one
child's (docs/data.md, "IM-N and NORMAL2-IM-N: two children"): pneumoscan reads them as two patients, which is a
leak across a split if they are one.

Run: ``python benchmarks/bench_patient_overlap.py [DATA] [--pairs 211] [--seed 0]``, DATA the Kermany folder
(default ``$PNEUMOSCAN_DATA``); only its ``train/`` films are read (224 px JPEGs). A few minutes on one core. Files
whose names are not the release's are skipped and named; on a partial release a kind of pair it holds none of gives
n/a, and a single shared-number pair no pixel comparison (no other number to pair its films to).

The shared-number pairs are measured against pairs known to be one child, so that a measure which finds nothing in
them is known to be able to find something:

- one child: ``personN_bacteria_a`` and ``personN_bacteria_b`` (or both virus), the release's own patient id, the
  first and last film of each; only pairs whose pHash is more than 90 of 256 bits apart (as far apart as the
  shared-number pairs' 10th percentile), so that no copy of a film counts;
- one study: the first two films of an ``IM-N`` (or ``NORMAL2-IM-N``) study with several;
- one patient by name, a bacteria and a virus film of ``personN`` (which pneumoscan groups as one patient).

Each film is described by ImageNet EfficientNet-Lite0 features (the weights pneumoscan ships, pooled, unit length;
cosine similarity). Retrieval ranks each pair's second film among the second films of ``--pairs`` pairs drawn at
random (all of them where fewer) by similarity to its first; the permutation p is the share of 5,000 random pairings
of the same films whose mean similarity reaches the true pairs'. The shared-number pairs are also compared with the
same films paired to other numbers (three derangements) on pixels: correlation at 64 px after an affine ECC
alignment, the 32 px correlation's permutation p, and the perceptual hash (pneumoscan's 256-bit pHash).
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import re
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from pneumoscan.data.copies import NEAR_DUPLICATE_BITS, scan_file
from pneumoscan.data.decode import read_gray
from pneumoscan.data.transforms import to_input
from pneumoscan.models.registry import create, normalization

Pair = tuple[str, str]
MODEL = "efficientnet_lite0"
FAR_BITS = 90  # one child's pairs further apart than this: no re-encoded copy of one film (those are <= 10)
SHUFFLES = 5000


def numbered(folder: Path) -> tuple[dict[tuple[str, int], list[str]], list[str]]:
    """The normal films by (family, study number), each study's films in name order; and the names not of the
    release's pattern (a .DS_Store, a renamed film), which say nothing of a study."""
    by: dict[tuple[str, int], list[str]] = defaultdict(list)
    odd = []
    for name in sorted(os.listdir(folder)):
        if m := re.match(r"(NORMAL2-)?IM-(\d+)-", name):
            by["N2" if m.group(1) else "IM", int(m.group(2))].append(str(folder / name))
        else:
            odd.append(name)
    return by, odd


def by_child(folder: Path) -> tuple[dict[tuple[str, str], list[str]], list[str]]:
    """The pneumonia films by (personN, subtype), in the order of the film number the name ends with; and the names
    not of the release's pattern, which name no child or no order."""
    films, odd = [], []
    for name in os.listdir(folder):
        child, number = re.match(r"(person\d+)_(bacteria|virus)_", name), re.search(r"_(\d+)\.", name)
        if child and number:
            films.append((int(number.group(1)), name, child.group(1), child.group(2)))
        else:
            odd.append(name)
    kind: dict[tuple[str, str], list[str]] = defaultdict(list)
    # by film number, equal numbers in listdir's order: the order docs/data.md's figures were made in
    for _, name, person, subtype in sorted(films, key=lambda film: film[0]):
        kind[person, subtype].append(str(folder / name))
    return kind, sorted(odd)


def pairs_by_name(by: dict[tuple[str, int], list[str]],
                  kind: dict[tuple[str, str], list[str]]) -> tuple[list[Pair], list[Pair], list[Pair], list[Pair]]:
    """From the names alone: the shared-number pairs, one child's pairs of one subtype (first and last film, before
    the pHash leaves out copies), one study's and one name's (a bacteria and a virus film of ``personN``). A partial
    release may hold none of a kind."""
    shared = [(by["IM", k][0], by["N2", k][0]) for f, k in sorted(by) if f == "IM" and ("N2", k) in by]
    same = [(v[0], v[-1]) for v in kind.values() if len(v) > 1]
    one_study = [(v[0], v[1]) for v in by.values() if len(v) > 1]
    mixed = [(kind[p, "bacteria"][0], kind[p, "virus"][0]) for p, k in list(kind) if k == "bacteria"
             and (p, "virus") in kind]
    return shared, same, one_study, mixed


def draw(pairs: Sequence[Pair], n: int, rng: np.random.Generator) -> list[Pair]:
    """``n`` of the pairs in random order (all of them where fewer): retrieval among as many candidates per row,
    so that every row's median rank reads against the same chance."""
    return [pairs[i] for i in rng.permutation(len(pairs))[:n]]


def retrieval(sim: Callable[[Sequence[str], Sequence[str]], np.ndarray], pairs: Sequence[Pair],
              rng: np.random.Generator) -> tuple[float, float, float]:
    """Median rank of each pair's partner among all second films, share ranked first, and the permutation p of the
    pairs' mean similarity against the same films paired at random."""
    s = sim([a for a, _ in pairs], [b for _, b in pairs])
    matched = np.diag(s)
    ranks = 1 + (s > matched[:, None]).sum(axis=1)
    null = np.array([s[np.arange(len(s)), rng.permutation(len(s))].mean() for _ in range(SHUFFLES)])
    p = (1 + (null >= matched.mean()).sum()) / (1 + SHUFFLES)
    return float(np.median(ranks)), float(np.mean(ranks == 1)), float(p)


def row(name: str, pairs: Sequence[Pair], limit: int, sim: Callable[[Sequence[str], Sequence[str]], np.ndarray],
        seed: int) -> str:
    """The retrieval table's line for ``pairs`` (at most ``limit`` of them drawn); n/a where there are none (a
    partial release), whose similarities would be of no film."""
    if not pairs:
        return f"| {name} | 0 | n/a | n/a | n/a |"
    rng = np.random.default_rng(seed)
    drawn = draw(pairs, limit, rng)
    rank, first, p = retrieval(sim, drawn, rng)
    n = len(drawn)
    return (f"| {name} | {n} of {len(pairs)} | {rank:g} ({(n + 1) / 2:g}) | {first:.1%} ({1 / n:.1%}) | "
            f"{'< 0.001' if p < 0.001 else f'{p:.2f}'} |")


class Films:
    """Decoded films, their Lite0 features and pHashes, each computed once and kept: the rows share films."""

    def __init__(self) -> None:
        self.mean, self.std = normalization(MODEL)
        self.gray: dict[str, np.ndarray] = {}
        self.feature: dict[str, np.ndarray] = {}
        self.hash: dict[str, np.ndarray] = {}  # packed bits

    @functools.cached_property
    def model(self) -> torch.nn.Module:
        """Loaded on the first features asked for: the pixel measures need none."""
        return create(MODEL, num_classes=0, in_chans=1, pretrained=True).eval()

    def pixels(self, path: str) -> np.ndarray:
        if path not in self.gray:
            self.gray[path] = read_gray(path)
        return self.gray[path]

    def features(self, paths: Sequence[str]) -> np.ndarray:
        """Pooled Lite0 features of unit length, at the films' own size and pneumoscan's input scaling."""
        todo = sorted(set(paths) - set(self.feature))
        with torch.no_grad():
            for i in range(0, len(todo), 64):
                chunk = todo[i:i + 64]
                x = to_input(torch.from_numpy(np.stack([self.pixels(p) for p in chunk]))[:, None], self.mean, self.std)
                self.feature.update(zip(chunk, torch.nn.functional.normalize(self.model(x), dim=1).numpy()))
        return np.stack([self.feature[p] for p in paths])

    def lite0(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        return self.features(a) @ self.features(b).T

    def small(self, path: str, side: int) -> np.ndarray:
        """The film at ``side`` px, standardised: pixel correlation that ignores brightness and contrast."""
        x = cv2.resize(self.pixels(path).astype(np.float32), (side, side), interpolation=cv2.INTER_AREA)
        return (x - x.mean()) / max(float(x.std()), 1e-6)

    def corr32(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """Pearson correlations at 32 px, every film of ``a`` with every film of ``b``."""
        x, y = (np.stack([self.small(p, 32).ravel() for p in films]) for films in (a, b))
        return x @ y.T / 32**2

    def aligned(self, a: str, b: str) -> float:
        """Correlation at 64 px after an affine ECC alignment of ``b`` to ``a`` (unaligned where ECC fails), the
        border left out: two films of one chest taken a little turned or shifted still correlate."""
        x, y = self.small(a, 64), self.small(b, 64)
        try:
            _, warp = cv2.findTransformECC(x, y, np.eye(2, 3, dtype=np.float32), cv2.MOTION_AFFINE,
                                           (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-5), None, 5)
            y = cv2.warpAffine(y, warp, (64, 64), flags=cv2.INTER_LINEAR + cv2.WARP_INVERSE_MAP)
        except cv2.error:
            pass
        return float(np.corrcoef(x[8:-8, 8:-8].ravel(), y[8:-8, 8:-8].ravel())[0, 1])

    def phash(self, a: str, b: str) -> int:
        """Bits apart of the two films' 256-bit pHashes, pneumoscan's copy check's own (:func:`scan_file`)."""
        for p in (a, b):
            if p not in self.hash:
                self.hash[p] = np.frombuffer(scan_file(p, header=False)["phash"], np.uint8)
        return int(np.unpackbits(self.hash[a] ^ self.hash[b]).sum())


def deranged(pairs: Sequence[Pair], seed: int) -> list[Pair]:
    """The same films with every first film given another pair's second: pairs of two numbers, the baseline; none
    for a single pair, whose films have no other number to be paired to."""
    if len(pairs) < 2:
        return []
    r, idx = random.Random(seed), list(range(len(pairs)))
    while any(i == j for i, j in enumerate(idx)):
        r.shuffle(idx)
    return [(pairs[i][0], pairs[j][1]) for i, j in enumerate(idx)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", default=os.environ.get("PNEUMOSCAN_DATA"),
                        help="the Kermany folder holding train/ (default: $PNEUMOSCAN_DATA)")
    parser.add_argument("--pairs", type=int, default=211, help="pairs per row (default: as many as share a number)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.data:
        parser.error("give the data folder or set PNEUMOSCAN_DATA")
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    train = Path(args.data) / "train"
    for label in ("NORMAL", "PNEUMONIA"):
        if not any((train / label).glob("*.jpeg")):
            sys.exit(f"{train / label}: no .jpeg film (give the Kermany folder or set PNEUMOSCAN_DATA)")
    (by, odd_normal), (kind, odd_sick) = numbered(train / "NORMAL"), by_child(train / "PNEUMONIA")
    for folder, odd in ((train / "NORMAL", odd_normal), (train / "PNEUMONIA", odd_sick)):
        if odd:
            print(f"{folder}: skipped {len(odd)} of its files, not named as the release names them "
                  f"({', '.join(odd[:3])}{', ...' if len(odd) > 3 else ''})")
    shared, same, one_study, mixed = pairs_by_name(by, kind)
    if not shared:  # the question asked of them, before the model is loaded
        sys.exit(f"{train / 'NORMAL'}: no `IM-N` and `NORMAL2-IM-N` films share a number: nothing to compare")
    films = Films()
    one_child = [p for p in same if films.phash(*p) > FAR_BITS]
    rows = [("`IM-N` and `NORMAL2-IM-N` (a shared number)", shared),
            (f"one child, one subtype, pHash > {FAR_BITS} of 256 bits", one_child),
            ("one study: two films of `IM-N` or `NORMAL2-IM-N`", one_study),
            ("one name: `personN_bacteria_*` and `personN_virus_*`", mixed)]

    print("| pairs of films | n | Lite0 retrieval: median rank of the partner (chance) | partner ranked first "
          "(chance) | permutation p |")
    print("|---|---|---|---|---|")
    for name, pairs in rows:
        print(row(name, pairs, args.pairs, films.lite0, args.seed))

    others = [p for seed in range(3) for p in deranged(shared, seed)]
    if not others:
        print("\none shared-number pair: its films have no other number to be paired to, so no pixel comparison")
        return
    rng = np.random.default_rng(args.seed)
    _, _, p32 = retrieval(films.corr32, draw(shared, args.pairs, rng), rng)
    print()
    print("| shared-number pairs against the same films paired to other numbers | shared number | other numbers |")
    print("|---|---|---|")
    print(f"| n | {len(shared)} | {len(others)} |")
    for label, measure in (("median correlation at 64 px, ECC-aligned", films.aligned),
                           ("median pHash distance (of 256 bits)", films.phash)):
        print(f"| {label} | {np.median([measure(*p) for p in shared]):.3g} | "
              f"{np.median([measure(*p) for p in others]):.3g} |")
    print(f"| pHash within {NEAR_DUPLICATE_BITS} bits (a copy) | "
          f"{sum(films.phash(*p) <= NEAR_DUPLICATE_BITS for p in shared)} | "
          f"{sum(films.phash(*p) <= NEAR_DUPLICATE_BITS for p in others)} |")
    print(f"| 32 px correlation, permutation p | {p32:.2f} | |")


if __name__ == "__main__":
    main()
