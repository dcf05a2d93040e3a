"""Copy the labelled mails of sisimai/set-of-emails here and write labels.json from the
expected reasons in sisimai's own test suite (rb-sisimai test/public/*.rb, `IsExpected`).

    python tests/samples/corpus/generate.py SET_OF_EMAILS_DIR RB_SISIMAI_DIR

Each rb test names its engine (`module Postfix`) and lists, per sample index, one
[status, reply code, reason, hard bounce, feedback type] per recipient; the sample is
`maildir/bsd/<lhost|rhost>-<engine>-<index>.eml` (arf-, rfc3464- and rfc3834- without a
prefix), as sisimai's lhost-code.rb builds the path. Samples without a file are skipped.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).parent
ENTRY = re.compile(r"\[\s*'([^']*)'\s*,\s*'([^']*)'\s*,\s*'([^']*)'\s*,\s*(true|false)\s*(?:,\s*'([^']*)')?\s*\]")
INDEX = re.compile(r"^\s*'(\d+)'\s*=>\s*\[", re.MULTILINE)


def labels_of(test: Path) -> tuple[str, dict[str, list[dict]]]:
    text = test.read_text()
    engine = re.search(r"^\s*module (\w+)\s*$", text.split("IsExpected")[0].splitlines()[-2] + "\n",
                       re.MULTILINE)
    if engine is None:
        engine = re.findall(r"module (\w+)", text.split("IsExpected")[0])[-1:]
        name = engine[0]
    else:
        name = engine[1]
    found: dict[str, list[dict]] = {}
    starts = list(INDEX.finditer(text))
    for n, start in enumerate(starts):
        end = starts[n + 1].start() if n + 1 < len(starts) else len(text)
        found[start[1]] = [{"status": e[0], "reply": e[1], "reason": e[2], "hard": e[3] == "true",
                            **({"feedback": e[4]} if e[4] else {})}
                           for e in ENTRY.findall(text[start.end() - 1:end])]
    return name.lower(), found


def main(corpus: Path, sisimai: Path) -> None:
    labels: dict[str, list[dict]] = {}
    for test in sorted((sisimai / "test" / "public").glob("*.rb")):
        if not re.match(r"(lhost|rhost)-[a-z0-9]+\.rb$|(arf|rfc3464|rfc3834)\.rb$", test.name) \
                or test.stem in ("lhost-code", "lhost-engine-test", "rhost-engine-test", "lhost-test", "rhost-test"):
            continue
        engine, expected = labels_of(test)
        prefix = test.stem.split("-")[0] + "-" if "-" in test.stem else ""
        for index, entries in expected.items():
            name = f"{prefix}{engine}-{int(index):02d}.eml"
            source = corpus / "maildir" / "bsd" / name
            if source.is_file() and entries:
                shutil.copyfile(source, HERE / name)
                labels[name] = entries
    shutil.copyfile(corpus / "LICENSE", HERE / "LICENSE")
    (HERE / "labels.json").write_text(json.dumps(labels, indent=1, sort_keys=True) + "\n")
    print(f"{len(labels)} labelled samples")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
