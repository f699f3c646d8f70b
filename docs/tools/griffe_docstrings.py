"""A griffe extension of the documentation build: the reStructuredText the code's docstrings use where Markdown
has no equivalent, turned into Markdown before mkdocstrings renders it.

* doctest examples (``>>> ...`` lines) become ``pycon`` code blocks (Markdown would show them as a quote);
* simple tables (columns under runs of ``=``, a header between the first two rules when there are three) become
  Markdown tables.
"""

from __future__ import annotations

import re

import griffe

RULE = re.compile(r"^(?P<indent>[ \t]*)=+(?:[ \t]+=+)+[ \t]*$")


def fence_doctests(text: str) -> str:
    """``text`` with each run of doctest lines (a ``>>>`` line and the lines after it up to a blank line) fenced."""
    lines, out, inside_fence, i = text.split("\n"), [], False, 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            inside_fence = not inside_fence
        if not inside_fence and line.lstrip().startswith(">>>"):
            indent = line[: len(line) - len(line.lstrip())]
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i])
                i += 1
            out += [f"{indent}```pycon", *block, f"{indent}```"]
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def _cells(line: str, starts: list[int]) -> list[str]:
    bounds = starts[1:] + [len(line) + 1]
    return [line[a:b].strip().replace("|", "\\|") for a, b in zip(starts, bounds, strict=True)]


def simple_tables(text: str) -> str:
    """``text`` with each reStructuredText simple table rewritten as a Markdown table."""
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        found = RULE.match(lines[i])
        if not found:
            out.append(lines[i])
            i += 1
            continue
        rule = lines[i]
        starts = [m.start() for m in re.finditer(r"=+", rule)]
        rules, rows, j = [i], [], i + 1
        while j < len(lines) and len(rules) < 3:
            if RULE.match(lines[j]):
                rules.append(j)
                if j + 1 >= len(lines) or not lines[j + 1].strip():
                    break
            elif not lines[j].strip():
                break
            j += 1
        body = [lines[k] for k in range(rules[0] + 1, rules[-1]) if k not in rules]
        if len(rules) < 2 or not body:
            out.append(lines[i])
            i += 1
            continue
        indent = found["indent"]
        header_rows = [lines[k] for k in range(rules[0] + 1, rules[1])] if len(rules) == 3 else []
        data_rows = [lines[k] for k in range(rules[-2] + 1, rules[-1])] if len(rules) == 3 else body
        header = _cells(header_rows[0], starts) if header_rows else [""] * len(starts)
        rows = [header, ["---"] * len(starts)] + [_cells(row, starts) for row in data_rows]
        out += [indent + "| " + " | ".join(row) + " |" for row in rows]
        i = rules[-1] + 1
    return "\n".join(out)


class DocstringMarkup(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is None:
            return
        text = obj.docstring.value
        if ">>>" in text:
            text = fence_doctests(text)
        if "==" in text:
            text = simple_tables(text)
        obj.docstring.value = text
