"""docs/architecture.md's table of folders stays true to the tree: every
.c file of a program folder is named in its row, and every name in a row
is a file there (a .c, or a header with no .c of its own, written with .h).
"""
import re
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2]
CODE_FOLDERS = ["common", "spool", "ingest", "dispatch", "transform", "sender", "tools", "api"]


def folder_rows():
    text = (SOURCE / "docs" / "architecture.md").read_text()
    section = text.split("## Folders", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].endswith("/"):
            names = re.sub(r"\([^)]*\)", "", cells[2])     # without the glosses
            rows[cells[0].rstrip("/")] = {n.strip() for n in names.split(",") if n.strip()}
    return rows


def test_every_code_folder_has_a_row():
    rows = folder_rows()
    assert set(CODE_FOLDERS) <= set(rows), set(CODE_FOLDERS) - set(rows)
    on_disk = {p.name for p in SOURCE.iterdir() if p.is_dir() and list(p.glob("*.c"))}
    assert on_disk <= set(rows), f"folders with C code but no row: {on_disk - set(rows)}"


def test_rows_match_the_files():
    rows = folder_rows()
    for folder in CODE_FOLDERS:
        path = SOURCE / folder
        sources = {p.stem for p in path.glob("*.c")}
        listed = rows[folder]
        missing = sources - listed
        assert not missing, f"{folder}/: not in architecture.md's folder table: {sorted(missing)}"
        for name in listed:
            assert (path / (name if name.endswith(".h") else name + ".c")).exists(), \
                f"architecture.md names {folder}/{name}, which is not there"
