"""What ``listen --fhir DIR`` spends on each study's Observation as the folder grows: the folder's index read at start
(each file once), then each write, which lists the folder again (names alone) to see what other processes put there
or removed, and reads only the files new since.

Run: ``python benchmarks/bench_fhir_index.py [--files 10000] [--studies 40]`` (no data, no bundle). It fills a
temporary folder with ``--files`` Observations of about 1.8 KB (as a listener's are), reads the index, and writes
``--studies`` Observations through it, half of new readings and half of readings the folder holds (replaced in
place); it prints the start, each write's median and largest time, and the listing alone on the unchanged folder.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from pneumoscan.interop.reports import FHIR_SUFFIX, ObservationIndex


def observation(n: int, method: str = "first") -> str:
    """An Observation of reading ``n``: its identifier, and a note of a listener's size."""
    return json.dumps({"resourceType": "Observation", "status": "preliminary", "method": {"text": method},
                       "identifier": [{"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{uuid.UUID(int=n)}"}],
                       "note": [{"text": "n" * 1500}]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10_000, help="Observations in the folder at start (10000)")
    parser.add_argument("--studies", type=int, default=40, help="Observations written through the index (40)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-fhir-index-") as tmp:
        folder = Path(tmp)
        for n in range(args.files):
            (folder / f"1.2.3.{n}{FHIR_SUFFIX}").write_text(observation(n))
        began = time.perf_counter()
        index = ObservationIndex(folder)
        start = time.perf_counter() - began
        writes = []
        for s in range(args.studies):
            n = args.files + s if s % 2 == 0 else s  # a new reading, or one the folder holds
            began = time.perf_counter()
            index.write(f"1.2.3.{n}", observation(n, "again"))
            writes.append(time.perf_counter() - began)
        listings = []
        for _ in range(args.studies):
            began = time.perf_counter()
            index._refresh()  # the listing each write makes, alone
            listings.append(time.perf_counter() - began)
        files = len(list(folder.glob(f"*{FHIR_SUFFIX}")))
    print(f"{args.files} Observations: index read at start in {start:.2f} s; a write: median "
          f"{statistics.median(writes) * 1000:.1f} ms, largest {max(writes) * 1000:.1f} ms over {args.studies}, "
          f"of which the listing alone (folder unchanged): median {statistics.median(listings) * 1000:.1f} ms; "
          f"{files} files after")


if __name__ == "__main__":
    main()
