"""``reconciler validate`` on N generated manifests, against a bare CSafeLoader parse.

Usage: python -m bench.validate_files [COUNT]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.generate import manifests
from reconciler.app.validation import validate_paths


def main(count: int = 1000) -> dict[str, float]:
    files = manifests(count)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for relpath, data in files.items():
            (root / relpath).parent.mkdir(parents=True, exist_ok=True)
            (root / relpath).write_bytes(data)
        started = time.perf_counter()
        for data in files.values():
            yaml.load(data, Loader=yaml.CSafeLoader)
        baseline = time.perf_counter() - started
        started = time.perf_counter()
        report = validate_paths([root], environ={})
        ours = time.perf_counter() - started
    if not report.valid or report.workflows != count:
        raise SystemExit(f"generated manifests did not validate: {report.errors[:3]}")
    result = {"manifests": count, "validate_s": ours, "csafeloader_s": baseline}
    result["ratio"] = ours / baseline
    print(
        f"validate {count} manifests: {ours:.3f} s; CSafeLoader parse: {baseline:.3f} s; "
        f"ratio {result['ratio']:.2f}x"
    )
    return result


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
