"""What every measurements/variants/NAME.py does: train_gpt.py (its first argument) with exact edits, on standard output."""
import sys
from pathlib import Path


def write_variant(name: str, edits: list[tuple[str, str]]) -> None:
    """Each (old, new): old must occur exactly once, else the variant no longer applies and says so."""
    source = Path(sys.argv[1]).read_text(encoding="utf-8")
    for old, new in edits:
        if source.count(old) != 1:
            sys.exit(f"{name}: train_gpt.py no longer has the code this variant changes: {old.strip()[:60]!r}")
        source = source.replace(old, new)
    sys.stdout.write(source)


def probe_code(probe: str) -> str:
    """A probe's code (measurements/PROBE), without its docstring, for a variant to write into the script."""
    source = (Path(__file__).resolve().parent / probe).read_text(encoding="utf-8")
    return source[source.index('"""', 3) + 3:].strip()
