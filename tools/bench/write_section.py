"""Write (or replace) one section of BENCHMARKS.md, so each part of `make bench` can be re-run
alone without touching the others.

    python3 tools/bench/write_section.py BENCHMARKS.md NAME < section.md

The section sits between `<!-- NAME section: ... -->` and `<!-- end of NAME section -->`. A new
section goes before the hand-written notes marker (or at the end of the file).
"""
import sys

path, name = sys.argv[1:]
body = sys.stdin.read().rstrip("\n")
begin_prefix, end = f"<!-- {name} section", f"<!-- end of {name} section -->"
section = f"{begin_prefix}: tools/bench -->\n{body}\n{end}"
notes = "<!-- notes below are kept by make bench -->"
try:
    text = open(path).read()
except FileNotFoundError:
    text = ""
if begin_prefix in text and end in text:
    a, b = text.index(begin_prefix), text.index(end) + len(end)
    text = text[:a] + section + text[b:]
elif notes in text:
    a = text.index(notes)
    text = text[:a] + section + "\n\n" + text[a:]
else:
    text = text.rstrip("\n") + "\n\n" + section + "\n"
open(path, "w").write(text)
