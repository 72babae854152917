#!/usr/bin/env python3
"""Counts the lines of non-test code in each file under src/ and prints the largest.

Issue 12 asks for no file over ~600 lines of non-test code. Test code is left out: an inline
`#[cfg(test)] mod name { ... }` block (brace-matched, braces inside strings, chars and comments
ignored), and whole files declared as `#[cfg(test)] mod name;`. Blank lines and comments count:
they are what a reader reads.

Usage: scripts/nontest-lines.py [N]   (prints the N largest, 5 by default; exit 1 if any > 600)
"""
import os
import re
import sys

LIMIT = 600
SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def code_only(text):
    """`text` with comments and string/char literal contents blanked (newlines kept), so that
    braces are counted in code only: strings may span lines (raw strings too)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append("\n" * text.count("\n", i, j))
            i = j
        elif re.match(r'b?r#*"', text[i : i + 260]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'b?r(#*)"', text[i:])
            end = '"' + m.group(1)
            j = text.find(end, i + m.end())
            j = n if j < 0 else j + len(end)
            out.append("\n" * text.count("\n", i, j))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append("\n" * text.count("\n", i, j))
            i = j + 1
        elif c == "'" and re.match(r"'(\\.[^']*|[^\\'])'", text[i : i + 12]):
            i += len(re.match(r"'(\\.[^']*|[^\\'])'", text[i : i + 12]).group(0))
        else:
            out.append(c)
            i += 1
    return "".join(out)


def count(path, test_files):
    text = open(path, encoding="utf-8").read()
    lines = text.split("\n")
    code = code_only(text).split("\n")
    assert len(code) == len(lines), path
    if lines and lines[-1] == "":
        lines.pop()
    n, i = 0, 0
    while i < len(lines):
        if lines[i].strip() == "#[cfg(test)]" and i + 1 < len(lines):
            m = re.match(r"\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*(;|\{)", lines[i + 1])
            if m and m.group(2) == ";":
                base = os.path.dirname(path)
                if not path.endswith(("mod.rs", "lib.rs", "main.rs")):
                    base = os.path.join(base, os.path.basename(path)[:-3])
                for cand in (m.group(1) + ".rs", os.path.join(m.group(1), "mod.rs")):
                    test_files.add(os.path.normpath(os.path.join(base, cand)))
                i += 2
                continue
            if m:
                depth, j = 0, i + 1
                while j < len(lines):
                    depth += code[j].count("{") - code[j].count("}")
                    j += 1
                    if depth == 0:
                        break
                i = j
                continue
        n += 1
        i += 1
    return n


def main():
    top = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    files = []
    for d, _, names in os.walk(SRC):
        files += [os.path.normpath(os.path.join(d, f)) for f in names if f.endswith(".rs")]
    test_files, counts = set(), {}
    for f in sorted(files):
        counts[f] = count(f, test_files)
    # Files under a test-only module (e.g. daemon/tests/*.rs) are test code too.
    test_dirs = {f[:-3] for f in test_files} | {os.path.dirname(f) for f in test_files if f.endswith("mod.rs")}
    rows = [
        (n, os.path.relpath(f, os.path.join(SRC, "..")))
        for f, n in counts.items()
        if f not in test_files and not any(f.startswith(d + os.sep) for d in test_dirs)
    ]
    rows.sort(reverse=True)
    for n, f in rows[:top]:
        print(f"{n:5} {f}")
    over = [f for n, f in rows if n > LIMIT]
    if over:
        print(f"over {LIMIT}: {', '.join(over)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
