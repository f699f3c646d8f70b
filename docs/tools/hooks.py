"""MkDocs hooks of the documentation site: the pages that are generated from the code, and Sphinx roles as links.

A page asks for a generated part with an HTML comment on a line of its own,
``<!-- generated: WHAT [ARGUMENT] -->``; :func:`on_page_markdown` replaces it
with Markdown built from the code itself (never copied by hand):

``cli``
    every subcommand and argument of ``dtd-properties``, from its argparse
    parser (:func:`properties.cli.parser`);
``pytest-options``
    every option the pytest plugin registers, from ``pytest_addoption`` of the
    entry point (:mod:`dtd_properties_pytest`) and of :mod:`properties.plugin`;
``rate-layouts`` / ``rate-vocabulary``
    every rate family's name layouts and the words its parts take, from
    :mod:`properties.measure.keys`;
``constants MODULE``
    a module's named constants with their ``#:`` comments and values
    (:mod:`properties.measure.thresholds`, :mod:`dtd.tolerances`, ...);
``aten-operations``
    the ATen operations the lowering treats as affine and as piecewise linear,
    and those it refuses by name (:mod:`dtd.lowering.aten`);
``word-scale``
    the words of the report's answers and when each is used (:data:`properties.report.summary.SCALE_TEXT`);
``must-hold``
    the conformance properties every implementation must keep
    (:data:`properties.measure.gates.MUST_HOLD`).

The docstrings of the code use Sphinx roles (``:class:`~dtd.graph.GraphNetwork```);
:func:`on_page_content` turns them into optional cross-references, which
mkdocs-autorefs links where the object is documented and shows as code
elsewhere.
"""

from __future__ import annotations

import argparse
import ast
import html
import importlib
import inspect
import re
from pathlib import Path

MARKER = re.compile(r"^<!-- generated: (?P<what>[a-z-]+)(?: (?P<argument>[\w.]+))? -->$", re.M)
ROLE = re.compile(
    r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const):<code>(?P<tilde>~?)(?P<target>[^<]+)</code>"
)


# --------------------------------------------------------------------------------------------- markdown helpers
def _cell(text) -> str:
    """``text`` safe inside a Markdown table cell: pipes escaped outside code spans (Python-Markdown's tables keep a
    pipe inside backticks as it is, and would show the backslash of an escaped one)."""
    parts = re.split(r"(`+[^`]*`+)", str(text).replace("\n", " "))
    return "".join(part if part.startswith("`") else _plain(part) for part in parts)


def _plain(text: str) -> str:
    """Text outside code spans, with the characters Markdown would read as markup escaped (a glob's ``*``)."""
    return re.sub(r"([|*_\[\]>])", r"\\\1", text).replace("<", "&lt;")


def _options_table(header: list[str], rows: list[list[str]]) -> str:
    """A table whose first column holds options: kept on one line by the site's CSS (``.dtd-options``)."""
    return '<div class="dtd-options" markdown>\n\n' + _table(header, rows) + "\n\n</div>"


def _code(text) -> str:
    text = str(text)
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- the CLI
def _action_row(action: argparse.Action) -> list[str]:
    if action.option_strings:
        name = ", ".join(action.option_strings)
        if action.nargs != 0 and action.metavar:
            name += f" {action.metavar}"
    else:
        name = action.metavar or action.dest
        if action.nargs in ("+", "*"):
            name += " ..."
    default = ""
    if action.option_strings and action.default not in (None, False, argparse.SUPPRESS) and action.nargs != 0:
        default = _code(action.default)
    return [_code(name), action.help or "", default]


def _parser_section(parser: argparse.ArgumentParser, title: str, level: int) -> list[str]:
    lines = [f"{'#' * level} `{title}`", "", "```text", parser.format_usage().strip(), "```", ""]
    if parser.description:
        lines += [parser.description, ""]
    rows = [_action_row(a) for a in parser._actions
            if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]
    if rows:
        lines += [_options_table(["argument", "what it does", "default"], rows), ""]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                if helps.get(name):
                    lines += [f"`{title} {name}`: {helps[name]}.", ""]
                lines += _parser_section(sub, f"{title} {name}", level + 1)
    return lines


def cli() -> str:
    from properties.cli import parser

    return "\n".join(_parser_section(parser(), "dtd-properties", 3))


# --------------------------------------------------------------------------------------------- pytest options
class _Recorder:
    """Stands in for pytest's parser and option group: records each ``addoption`` call."""

    def __init__(self):
        self.options: list[tuple[tuple[str, ...], dict]] = []

    def getgroup(self, *args, **kwargs):
        return self

    def addoption(self, *names, **kwargs):
        self.options.append((names, kwargs))

    def addini(self, *args, **kwargs):
        pass


def _option_rows(options) -> list[list[str]]:
    rows = []
    for names, kwargs in options:
        name = ", ".join(names)
        if kwargs.get("metavar"):
            name += f" {kwargs['metavar']}"
        rows.append([_code(name), kwargs.get("help", "")])
    return rows


def pytest_options() -> str:
    import dtd_properties_pytest
    import properties.plugin as plugin

    entry = _Recorder()
    dtd_properties_pytest.pytest_addoption(entry)
    suite = _Recorder()
    parameters = inspect.signature(plugin.pytest_addoption).parameters
    plugin.pytest_addoption(*([suite] + [None] * (len(parameters) - 1)))
    return "\n".join([
        "Registered in every pytest run of an environment where the package is installed (the `pytest11` entry "
        "point, module `dtd_properties_pytest`; `pytest --help`, group \"DTD property suite\"):", "",
        _options_table(["option", "what it does"], _option_rows(entry.options)), "",
        "Registered only where a run loads `properties.plugin` itself (`-p properties.plugin`, a conftest's "
        "`pytest_plugins`, this repository's own runs, the `dtd-properties` console script):", "",
        _options_table(["option", "what it does"], _option_rows(suite.options)),
    ])


# --------------------------------------------------------------------------------------------- rate keys
def _layout_text(layout) -> str:
    parts = []
    for slot in layout:
        if slot[0] == "lit":
            parts.append(slot[1])
        elif slot[0] == "lit?":
            parts.append(f"[{slot[1]}]")
        else:
            name = slot[1].rstrip("?")
            special = {"place": "layer{k} | neuron{j}", "depth": "depth{d}", "randomised": "top{n}"}
            shown = special.get(name, "{" + name + "}")
            parts.append(f"[{shown}]" if slot[1].endswith("?") else shown)
    return ".".join(parts).replace(".[", "[.")


def rate_layouts() -> str:
    from properties.measure import keys

    rows = []
    for family in keys.FAMILIES:
        layouts = keys._LAYOUTS[family]
        rows.append([_code(family), "<br>".join(_code(_layout_text(layout)) for layout in layouts)])
    return _table(["family", "name layout (`[...]`: optional part)"], rows)


def rate_vocabulary() -> str:
    from properties.measure import keys

    sections = [
        ("Outcomes (`{outcome}`)", keys.OUTCOMES),
        ("Units (`{unit}`)", keys.UNITS),
        ("Subsets (`{subset}`)", keys.SUBSETS),
        ("Pairs of an insensitivity rate (`{pair}`)", keys.PAIRS),
    ]
    lines = []
    for title, table in sections:
        lines += [f"#### {title}", "", _table(["word", "meaning"], [[_code(k), v] for k, v in table.items()]), ""]
    finders = [[_code(family), _code(word), text]
               for family, words in keys.FINDERS.items() for word, text in words.items()]
    lines += ["#### Root finders (`{finder}`)", "", _table(["family", "word", "root finder"], finders)]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- constants
def constants(module_name: str) -> str:
    """The module's constants that carry a ``#:`` comment: name, value, comment."""
    module = importlib.import_module(module_name)
    source = Path(inspect.getsourcefile(module)).read_text()
    lines = source.splitlines()
    rows = []
    for node in ast.parse(source).body:
        targets = []
        if isinstance(node, ast.Assign):
            targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            targets = [node.target.id]
        if not targets or targets[0].startswith("_"):
            continue
        comment, at = [], node.lineno - 2
        while at >= 0 and lines[at].lstrip().startswith("#:"):
            comment.insert(0, lines[at].lstrip()[2:].strip())
            at -= 1
        if not comment:
            continue
        value = getattr(module, targets[0])
        shown = repr(value)
        if isinstance(value, dict):
            shown = ", ".join(f"{k}: {v!r}" for k, v in value.items())
        shown = shown.replace("torch.", "")
        rows.append([_code(targets[0]), _code(shown if len(shown) <= 80 else shown[:77] + "..."), " ".join(comment)])
    return _table(["name", "value", "what it is"], rows)


# --------------------------------------------------------------------------------------------- the lowering
#: the refusal lists of :mod:`dtd.lowering.refusals`, and how the page names each
REFUSED = {
    "_SMOOTH": "smooth",
    "_QUADRATIC": "piecewise quadratic",
    "_NORMS": "normalisations by an input's own statistics",
    "_SOFTMAX": "softmax and its relatives",
    "_PRODUCTS": "products of two activations",
    "_INDEXING": "data-dependent indexing",
    "_DISCONTINUOUS": "discontinuous",
    "_RANDOM": "random",
}


def aten_operations() -> str:
    import dtd.lowering  # noqa: F401  (imports the handlers' modules, which register the operations)
    from dtd.lowering import aten, refusals

    def listed(names) -> str:
        return ", ".join(_code(n) for n in sorted(names))

    affine, piecewise = aten.operations("affine"), aten.operations("piecewise linear")
    if not affine or not piecewise:
        raise ValueError("dtd.lowering.aten.operations() lists no affine or no piecewise-linear operation")
    lines = [
        f"**Affine** ({len(affine)} operations, part of a DTD layer; `dtd.lowering.linear`): {listed(affine)}.", "",
        f"**Piecewise linear** ({len(piecewise)} operations, ReLU units or max pooling; `dtd.lowering.hinges`): "
        f"{listed(piecewise)}.", "",
        f"**Skipped** (they compute nothing): {listed(aten.IGNORED)}; **constants of the input's shape**: "
        f"{listed(aten.LIKE)}.", "",
    ]
    found = [(words, getattr(refusals, name)) for name, words in REFUSED.items() if hasattr(refusals, name)]
    if not found:
        raise ValueError(f"dtd.lowering.refusals holds none of {sorted(REFUSED)}: update docs/tools/hooks.py")
    for words, names in found:
        lines += [f"**Refused, {words}** (`dtd.lowering.refusals`): {listed(names)}.", ""]
    lines.append("Any other operation that reads the input is refused too, by its name and module.")
    return "\n".join(lines)


def must_hold() -> str:
    from properties.measure import gates, keys

    return _table(["property", "what every implementation must keep"],
                  [[_code(name), keys.OUTCOMES[name]] for name in gates.MUST_HOLD])


def word_scale() -> str:
    from properties.report.summary import SCALE_TEXT

    return _table(["word", "when"], [[f"*{word}*", when] for word, when in SCALE_TEXT])


GENERATORS = {
    "word-scale": word_scale,
    "cli": cli,
    "pytest-options": pytest_options,
    "rate-layouts": rate_layouts,
    "rate-vocabulary": rate_vocabulary,
    "constants": constants,
    "aten-operations": aten_operations,
    "must-hold": must_hold,
}


# --------------------------------------------------------------------------------------------- mkdocs events
def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:
    def generate(match: re.Match) -> str:
        what, argument = match["what"], match["argument"]
        if what not in GENERATORS:
            raise ValueError(f"{page.file.src_path}: unknown generated part {what!r}; known: {sorted(GENERATORS)}")
        function = GENERATORS[what]
        return function(argument) if argument else function()

    return MARKER.sub(generate, markdown)


def on_page_content(content: str, page, config, files, **kwargs) -> str:
    def link(match: re.Match) -> str:
        target = html.unescape(match["target"]).rstrip("()")
        shown = target.rsplit(".", 1)[-1] if match["tilde"] else target
        return f'<autoref identifier="{html.escape(target)}" optional><code>{html.escape(shown)}</code></autoref>'

    return ROLE.sub(link, content)
