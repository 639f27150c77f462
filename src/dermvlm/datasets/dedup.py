"""Exact and near-duplicate images (perceptual hash) across the whole build, and their resolution per policy."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from dermvlm.datasets.adapters.common import DatasetError
from dermvlm.datasets.records import Record

POLICIES = ("error", "drop_train", "report")
SPLIT_RANK = {"test": 0, "val": 1, "train": 2}


@dataclass
class DuplicateReport:
    exact_pairs: list[tuple[int, int]] = field(default_factory=list)
    near_pairs: list[tuple[int, int, int]] = field(default_factory=list)  # (i, j, hamming distance)
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (image, why)

    def cross_split(self, records: list[Record]) -> list[tuple[int, int]]:
        pairs = self.exact_pairs + [(i, j) for i, j, _ in self.near_pairs]
        return [(i, j) for i, j in pairs if records[i].split != records[j].split]

    def summary(self, records: list[Record]) -> dict:
        return {"exact_pairs": len(self.exact_pairs), "near_pairs": len(self.near_pairs),
                "cross_split_pairs": len(self.cross_split(records)), "dropped": len(self.dropped)}


def find_duplicates(sha: list[str], phash: list[int], threshold: int = 4) -> DuplicateReport:
    """Exact duplicates (same decoded pixels) and near duplicates (pHash Hamming distance <= threshold).

    Near pairs are found by multi-index hashing: split the 64-bit hash into threshold+1 chunks; two hashes within
    ``threshold`` bits agree exactly on at least one chunk (pigeonhole), so only bucket-mates are compared.
    """
    report = DuplicateReport()
    by_sha: dict[str, list[int]] = defaultdict(list)
    for i, h in enumerate(sha):
        by_sha[h].append(i)
    exact = set()
    for idx in by_sha.values():
        for a in idx[1:]:
            report.exact_pairs.append((idx[0], a))
            exact.add((idx[0], a))
    if threshold <= 0:
        return report
    chunks = threshold + 1
    bounds = [round(64 * k / chunks) for k in range(chunks + 1)]
    seen: set[tuple[int, int]] = set()
    for c in range(chunks):
        lo, hi = bounds[c], bounds[c + 1]
        mask = (1 << (hi - lo)) - 1
        buckets: dict[int, list[int]] = defaultdict(list)
        for i, h in enumerate(phash):
            buckets[(h >> lo) & mask].append(i)
        for idx in buckets.values():
            if len(idx) < 2 or len(idx) > 2000:  # a huge bucket is a degenerate (flat) hash: skip it
                continue
            for x in range(len(idx)):
                for y in range(x + 1, len(idx)):
                    i, j = idx[x], idx[y]
                    if (i, j) in seen or (i, j) in exact or sha[i] == sha[j]:
                        continue
                    seen.add((i, j))
                    d = (phash[i] ^ phash[j]).bit_count()
                    if d <= threshold:
                        report.near_pairs.append((i, j, d))
    report.near_pairs.sort()
    return report


def resolve(records: list[Record], report: DuplicateReport, policy: str) -> list[Record]:
    """Apply the policy to duplicates that cross splits: ``error`` fails, ``drop_train`` removes the copy in the
    later split (train before val before test are dropped: test stays intact), ``report`` keeps everything."""
    if policy not in POLICIES:
        raise DatasetError(f"dedup.policy {policy!r}: allowed values are {', '.join(POLICIES)}")
    crossing = report.cross_split(records)
    if not crossing or policy == "report":
        return records
    if policy == "error":
        i, j = crossing[0]
        raise DatasetError(f"{len(crossing)} duplicate image pair(s) across splits, e.g. {records[i].image} "
                           f"({records[i].split}) and {records[j].image} ({records[j].split}); set dedup.policy: "
                           "drop_train or report (a run config: data.dedup.policy)")
    drop = set()
    for i, j in crossing:
        loser = i if SPLIT_RANK[records[i].split] > SPLIT_RANK[records[j].split] else j
        keeper = j if loser == i else i
        if loser not in drop:
            drop.add(loser)
            report.dropped.append((records[loser].image, f"duplicate across splits: kept {records[keeper].image} "
                                                         f"in {records[keeper].split}"))
    return [r for k, r in enumerate(records) if k not in drop]
