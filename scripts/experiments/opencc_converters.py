"""Traditional -> simplified converters on real 全唐诗 text: throughput, and agreement with the reference OpenCC.

    python -m venv /tmp/cc && /tmp/cc/bin/pip install opencc opencc-pyo3 zhconv-rs-opencc
    python -m venv /tmp/cc-py && /tmp/cc-py/bin/pip install opencc-python-reimplemented  # also a module `opencc`
    /tmp/cc/bin/python scripts/experiments/opencc_converters.py data/raw
    /tmp/cc-py/bin/python scripts/experiments/opencc_converters.py data/raw

Each candidate that imports in this interpreter converts the paragraphs of the first ten poet.tang files, one
call for all of them (lines joined by newlines); OpenCC's C++ binding also one call per line (how often prepare
calls it is in between: once per poem). Agreement = share of lines equal to the C++ OpenCC's output (skipped
when it is not installed here). Run it under the heavy-run lock; the pure-Python one gets a twentieth of the text.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path


def candidates() -> dict[str, tuple[Callable[[str], str], float]]:
    """name -> (convert, share of the text it gets)."""
    found: dict[str, tuple[Callable[[str], str], float]] = {}
    try:
        import opencc

        if hasattr(opencc, "__version__"):  # the C++ binding; opencc-python-reimplemented has no version
            found[f"opencc {opencc.__version__} (C++ OpenCC)"] = (opencc.OpenCC("t2s").convert, 1.0)
        else:
            found["opencc-python-reimplemented (pure Python)"] = (opencc.OpenCC("t2s").convert, 0.05)
    except ImportError:
        pass
    try:
        import opencc_pyo3

        found["opencc-pyo3 (Rust)"] = (opencc_pyo3.OpenCC("t2s").convert, 1.0)
    except ImportError:
        pass
    try:
        import zhconv_rs_opencc

        found["zhconv-rs-opencc (Rust, MediaWiki + OpenCC tables)"] = (
            lambda text: zhconv_rs_opencc.zhconv(text, "zh-hans"),
            1.0,
        )
    except ImportError:
        pass
    return found


def main() -> None:
    raw = Path(sys.argv[1] if len(sys.argv) > 1 else "data/raw")
    lines = []
    for path in sorted((raw / "chinese-poetry" / "quantangshi").glob("poet.tang.*.json"))[:10]:
        lines += [line for poem in json.loads(path.read_text(encoding="utf-8")) for line in poem["paragraphs"]]
    found = candidates()
    reference = next((convert for name, (convert, _) in found.items() if "C++" in name), None)
    print(f"{len(lines):,} lines, {sum(map(len, lines)):,} characters of 全唐诗")
    for name, (convert, share) in found.items():
        part = lines[: max(1, int(len(lines) * share))]
        text = "\n".join(part)
        start = time.process_time()
        converted = convert(text).split("\n")
        seconds = time.process_time() - start
        agreement = ""
        if reference is not None:
            same = sum(a == b for a, b in zip(converted, reference(text).split("\n"), strict=True))
            agreement = f", {same / len(part):.1%} of lines as the C++ OpenCC"
        print(f"{name}: {len(text) / seconds / 1e6:.2f} M chars/s (one call){agreement}")
        if "C++" in name:
            start = time.process_time()
            for line in part:
                convert(line)
            print(f"{name}: {len(text) / (time.process_time() - start) / 1e6:.2f} M chars/s (one call per line)")


if __name__ == "__main__":
    main()
