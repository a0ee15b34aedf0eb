"""Render the recipe reference, docs/recipes.md, from the registered built-in components, and the
command-line reference, docs/cli.md, from the click commands:

    python -m diffratio.docgen > docs/recipes.md
    python -m diffratio.docgen cli > docs/cli.md

Every table a recipe may hold is listed with each built-in component's Config fields: type, default and
one line of meaning. The meaning is the field's ``# comment`` in the source: trailing, on whole lines
right above it, or on a line right under it that starts with ``# ^`` (continued on lines indented past
their ``#``); else a ``name: meaning`` line in the Config class's docstring. tests/test_docs.py fails when
docs/recipes.md differs from a fresh rendering or when a field has no meaning (``missing_meanings``).
"""

from __future__ import annotations

import ast
import functools
import inspect
import io
import json
import re
import sys
import tokenize
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from diffratio.components import KINDS
from diffratio.recipe import MULTI_KIND, MULTI_TABLES, SINGLE_TABLES, RunSettings
from diffratio.registry import Registry

COMMAND = "python -m diffratio.docgen > docs/recipes.md"


@attrs.frozen
class FieldDoc:
    """One documented key of a recipe table (nested tables give dotted keys)."""

    key: str
    type: str
    default: str
    meaning: str | None


# --------------------------------------------------------------------------------------------------
# Meanings from the source
# --------------------------------------------------------------------------------------------------


@functools.cache
def _module_source(path: str) -> tuple[ast.Module, dict[int, str], list[str]]:
    text = Path(path).read_text()
    comments = {tok.start[0]: tok.string for tok in tokenize.generate_tokens(io.StringIO(text).readline)
                if tok.type == tokenize.COMMENT}
    return ast.parse(text), comments, text.splitlines()


def _find_class(tree: ast.Module, qualname: str) -> ast.ClassDef | None:
    body: list[ast.stmt] = tree.body
    node: ast.ClassDef | None = None
    for part in qualname.split("."):
        node = next((n for n in body if isinstance(n, ast.ClassDef) and n.name == part), None)
        if node is None:
            return None
        body = node.body
    return node


def _clean(comment: str) -> str:
    return comment.lstrip("#").strip().removeprefix("^").strip()


def _own_meanings(cls: type) -> dict[str, str]:
    """Meanings of the fields a class defines itself, from comments and its docstring."""
    out: dict[str, str] = {}
    for line in (inspect.getdoc(cls) or "").splitlines():
        m = re.match(r"^\s*`{0,2}(\w+)`{0,2}\s*:\s*(\S.*)$", line)
        if m:
            out[m[1]] = m[2].strip()
    try:
        path = inspect.getsourcefile(cls)
    except TypeError:
        return out
    if path is None:
        return out
    tree, comments, lines = _module_source(path)
    node = _find_class(tree, cls.__qualname__)
    if node is None:
        return out
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        end = stmt.end_lineno or stmt.lineno
        run, n = [], stmt.lineno - 1  # the whole-line comments right above the field
        while _whole_comment(n, comments, lines):
            run.insert(0, n)
            n -= 1
        above = [_clean(comments[k]) for k in run if not _in_caret_block(k, comments, lines)]
        parts = [" ".join(above)] if above else []
        parts += [_clean(comments[n]) for n in range(stmt.lineno, end + 1) if n in comments]
        below = end + 1
        if below in comments and lines[below - 1].strip().startswith("# ^"):
            block = [_clean(comments[below])]  # the "# ^" line and its indented continuation lines
            while _in_caret_block(below + 1, comments, lines) and not _is_caret(below + 1, lines):
                below += 1
                block.append(_clean(comments[below]))
            parts.append(" ".join(block))
        if parts:
            out[stmt.target.id] = "; ".join(p for p in parts if p)
    return out


def _whole_comment(n: int, comments: dict[int, str], lines: list[str]) -> bool:
    """Whether line ``n`` (1-based) holds only a comment."""
    return n in comments and lines[n - 1].strip().startswith("#")


def _is_caret(n: int, lines: list[str]) -> bool:
    return lines[n - 1].strip().startswith("# ^")


def _in_caret_block(n: int, comments: dict[int, str], lines: list[str]) -> bool:
    """Whether line ``n`` belongs to the meaning of the field above it: a ``# ^`` line, or a comment line
    indented past the ``#`` (``#   more``) that follows one directly or through other such lines."""
    while _whole_comment(n, comments, lines):
        if _is_caret(n, lines):
            return True
        if not lines[n - 1].strip().startswith("#  "):
            return False
        n -= 1
    return False


def field_meanings(config_cls: type) -> dict[str, str]:
    """Meaning of every field of an attrs class that has one, inherited fields included."""
    out: dict[str, str] = {}
    for klass in reversed(config_cls.__mro__):
        if klass is not object:
            out.update(_own_meanings(klass))
    return out


# --------------------------------------------------------------------------------------------------
# Types and defaults as a recipe author writes them
# --------------------------------------------------------------------------------------------------


def type_name(tp: Any) -> str:
    """``int``, ``array of int``, ``one of "a", "b"``, ``int (optional)``, ``table``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        inner = " or ".join(type_name(a) for a in rest)
        return f"{inner} (optional)" if len(rest) < len(args) else inner
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"array of {type_name(args[0])}"
        return "array [" + ", ".join(type_name(a) for a in args) + "]"
    if attrs.has(tp):
        return "table"
    return getattr(tp, "__name__", str(tp))


def toml_value(value: Any) -> str:
    """A value as TOML would spell it (None: the key is left out)."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if attrs.has(type(value)):
        items = (f"{f.name} = {toml_value(getattr(value, f.name))}" for f in attrs.fields(type(value)))
        return "{ " + ", ".join(items) + " }"
    return repr(value)


def _default_of(field: attrs.Attribute) -> Any:
    d = field.default
    if isinstance(d, attrs.Factory):  # type: ignore[arg-type]
        return d.factory()
    return d


def config_fields(config_cls: type, prefix: str = "") -> list[FieldDoc]:
    """Every key of a Config class; a nested attrs table adds its own keys as ``field.key`` rows."""
    hints = typing.get_type_hints(config_cls)
    meanings = field_meanings(config_cls)
    rows: list[FieldDoc] = []
    for f in attrs.fields(config_cls):
        tp = hints[f.name]
        default = _default_of(f)
        key = prefix + f.name
        required = default is attrs.NOTHING
        if attrs.has(tp):
            rows.append(FieldDoc(key, f"table ({tp.__name__})", "required" if required else "see below",
                                 meanings.get(f.name)))
            for sub in config_fields(tp, key + "."):
                if not required:  # the component's default for this table, key by key
                    value = getattr(default, sub.key.rsplit(".", 1)[1])
                    sub = attrs.evolve(sub, default=toml_value(value))
                rows.append(sub)
            continue
        rows.append(FieldDoc(key, type_name(tp), "required" if required else toml_value(default),
                             meanings.get(f.name)))
    return rows


# --------------------------------------------------------------------------------------------------
# The document
# --------------------------------------------------------------------------------------------------

TABLE_OF_KIND = {**{t: t for t in SINGLE_TABLES}, **{k: t for t, k in MULTI_KIND.items()}}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(rows: list[FieldDoc]) -> list[str]:
    if not rows:
        return ["No settings.", ""]
    out = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for r in rows:
        default = r.default if r.default in ("required", "see below") else f"`{_cell(r.default)}`"
        out.append(f"| `{r.key}` | {_cell(r.type)} | {default} | {_cell(r.meaning or '')} |")
    return [*out, ""]


def _summary(cls: type) -> str:
    """The first paragraph of the class docstring, on one line."""
    doc = inspect.getdoc(cls) or ""
    return " ".join(doc.split("\n\n")[0].split())


def builtin_registry() -> Registry:
    """Built-in components only, whatever third-party plugins are installed."""
    return Registry().load(entry_points=False)


def _components(registry: Registry) -> Iterator[tuple[str, str, Any]]:
    for kind in TABLE_OF_KIND:
        for name in registry.names(kind):
            yield kind, name, registry.get(kind, name)


def missing_meanings(registry: Registry | None = None) -> list[str]:
    """``table name: key`` for every documented key without a meaning (the reference must have none)."""
    registry = registry or builtin_registry()
    out = [f"[run]: {r.key}" for r in config_fields(RunSettings) if not r.meaning]
    for kind, name, spec in _components(registry):
        out += [f"[{TABLE_OF_KIND[kind]}] {name}: {r.key} ({spec.cls.__module__}.{spec.cls.Config.__qualname__})"
                for r in config_fields(spec.cls.Config) if not r.meaning]
    return out


def render(registry: Registry | None = None) -> str:
    """The Markdown text of docs/recipes.md."""
    registry = registry or builtin_registry()
    lines = [
        "# Recipe reference",
        "",
        f"<!-- generated by `{COMMAND}`; do not edit: tests/test_docs.py fails when it is stale -->",
        "",
        "A recipe is a TOML file: a `[run]` table, one table per component (`name = \"...\"` picks the "
        "registered component, the other keys are its settings) and tables of tables for metrics and "
        "loggers (`[metrics.energy-distance]`). Override any key on the command line with "
        "`--set table.key=value`. Unknown keys and values of the wrong type are errors, all reported at once. "
        "`dr-plugins` lists the same settings for every installed component, third-party plugins included.",
        "",
        "A nested table given in part, such as `generator_optimizer = { lr = 1e-4 }`, takes its other keys "
        "from the nested type's own defaults (the `OptimizerConfig` defaults below are those of each field "
        "as a whole): write out every key whose component default you want to keep.",
        "",
        "Tables and their default component (tables without a default are required):",
        "",
        "| table | kind | default |",
        "|---|---|---|",
    ]
    for table, default in SINGLE_TABLES.items():
        lines.append(f"| `[{table}]` | {table} | {f'`{default}`' if default else 'required'} |")
    for table, defaults in MULTI_TABLES.items():
        on = ", ".join(f"`{n}`" for n in defaults) or "none"
        lines.append(f"| `[{table}.NAME]` | {MULTI_KIND[table]} | {on} (switch one off with `NAME = false`) |")
    lines += ["", "A method reads only the tables it uses (listed under each method); the others must be left out.",
              "", "## `[run]`", "", _summary(RunSettings), "", *_table(config_fields(RunSettings))]
    for kind in TABLE_OF_KIND:
        table = TABLE_OF_KIND[kind]
        heading = f"[{table}.NAME]" if table in MULTI_TABLES else f"[{table}]"
        lines += [f"## `{heading}`: {kind}", "", _summary(KINDS[kind]), ""]
        for name in registry.names(kind):
            spec = registry.get(kind, name)
            cls = spec.cls
            lines += [f"### `{name}`", ""]
            if spec.description:
                end = "" if spec.description.endswith((".", "!", "?")) else "."
                lines += [f"{spec.description[0].upper()}{spec.description[1:]}{end}", ""]
            doc = inspect.getdoc(cls)
            if doc:
                lines += [doc, ""]
            uses = getattr(cls, "uses", None)
            if kind == "method":
                lines += ["Tables it uses besides `[dataset]` and `[strategy]`: "
                          + (", ".join(f"`[{t}]`" for t in uses) if uses else "none") + ".", ""]
            lines += _table(config_fields(cls.Config))
    return "\n".join(lines).rstrip("\n") + "\n"


# --------------------------------------------------------------------------------------------------
# The command-line reference
# --------------------------------------------------------------------------------------------------

CLI_COMMAND = "python -m diffratio.docgen cli > docs/cli.md"

#: console scripts in reading order; any other script of the distribution follows, sorted by name
SCRIPT_ORDER = ("dr-train", "dr-plugins", "dr-sample", "dr-eval", "dr-dataset")


def console_scripts() -> dict[str, Any]:
    """The installed ``diffratio`` distribution's console scripts, name -> click command, in reading order."""
    from importlib.metadata import distribution

    found = {ep.name: ep for ep in distribution("diffratio").entry_points if ep.group == "console_scripts"}
    names = [n for n in SCRIPT_ORDER if n in found] + sorted(n for n in found if n not in SCRIPT_ORDER)
    return {name: found[name].load() for name in names}


def _param_type(param: Any) -> str:
    """A parameter's type in words: ``flag``, ``integer >= 1``, ``best \\| sir``, ``file (must exist)``."""
    import click

    if isinstance(param, click.Option) and param.is_flag:
        return "flag"
    tp = param.type
    if isinstance(tp, click.Choice):
        return " \\| ".join(str(c) for c in tp.choices)
    if isinstance(tp, click.types._NumberRangeBase):
        base = "integer" if isinstance(tp, click.IntRange) else "number"
        bounds = []
        if tp.min is not None:
            bounds.append(f"{'>' if tp.min_open else '>='} {tp.min}")
        if tp.max is not None:
            bounds.append(f"{'<' if tp.max_open else '<='} {tp.max}")
        return " ".join([base, *bounds]) if len(bounds) < 2 else f"{base} in [{tp.min}, {tp.max}]"
    if isinstance(tp, click.Path):
        kind = "file" if not tp.dir_okay else "folder" if not tp.file_okay else "path"
        return f"{kind} (must exist)" if tp.exists else kind
    return {"integer": "integer", "float": "number", "text": "text", "boolean": "true/false"}.get(tp.name, tp.name)


def _param_default(param: Any, ctx: Any) -> str:
    import click

    if isinstance(param, click.Argument):
        return "required" if param.required else ""
    if param.required:
        return "required"
    if param.multiple:
        return "repeatable"
    default = param.get_default(ctx, call=False)
    if default is None or default is False or type(default).__name__ == "Sentinel" or callable(default):
        return ""
    return f"`{default}`" if default != "" else '`""`'


def _param_names(param: Any) -> str:
    import click

    if isinstance(param, click.Argument):
        return f"`{param.human_readable_name}`"
    names = ", ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
    if not param.is_flag and param.metavar:
        names = names[:-1] + f" {param.metavar}`"
    return names


def _command_lines(command: Any, prog: str, level: int, parent: Any = None) -> list[str]:
    """One command's section: usage, help text, and a table of its arguments and options."""
    import click

    ctx = click.Context(command, info_name=prog.split()[-1], parent=parent, **command.context_settings)
    usage = " ".join([prog, *command.collect_usage_pieces(ctx)])
    lines = [f"{'#' * level} `{prog}`", "", "```text", usage, "```", ""]
    help_text = inspect.cleandoc(command.help or "").replace("\b\n", "")
    if help_text:
        lines += [help_text, ""]
    params = [p for p in command.get_params(ctx) if not (isinstance(p, click.Option) and p.hidden)]
    if params:
        lines += ["| argument / option | type | default | meaning |", "|---|---|---|---|"]
        for p in params:
            meaning = getattr(p, "help", None) or ("see above" if isinstance(p, click.Argument) else "")
            lines.append(f"| {_param_names(p)} | {_param_type(p)} | {_param_default(p, ctx)} | {_cell(meaning)} |")
        lines.append("")
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            lines += _command_lines(command.get_command(ctx, name), f"{prog} {name}", level + 1, ctx)
    return lines


def render_cli() -> str:
    """The Markdown text of docs/cli.md."""
    import click

    from diffratio.__main__ import main as module_main

    scripts = console_scripts()
    ctx = click.Context(module_main, info_name="diffratio")
    same_as = {}
    for name in module_main.list_commands(ctx):
        command = module_main.get_command(ctx, name)
        same_as[name] = next((s for s, c in scripts.items() if c is command), None)
    lines = [
        "# Command-line reference",
        "",
        f"<!-- generated by `{CLI_COMMAND}`; do not edit: tests/test_docs.py fails when it is stale -->",
        "",
        "Installing diffratio (`pip install -e .`) puts these commands on the `PATH`; every one prints this "
        "help with `-h` or `--help`. Where the scripts are not installed (a source tree on `PYTHONPATH`, a "
        "machine without `pip install`), `python -m diffratio COMMAND` runs the same commands:",
        "",
        "| command | same as |",
        "|---|---|",
    ]
    for name, script in same_as.items():
        lines.append(f"| `python -m diffratio {name}` | {f'`{script}`' if script else '(no console script)'} |")
    lines += [
        "",
        "Errors a user can fix (a recipe key, a missing file, an unknown component) are printed as one "
        "message without a traceback, with exit status 2; a run stopped by Ctrl-C or SIGTERM writes a "
        "checkpoint first and exits with 128 + the signal number. Recipe keys are in docs/recipes.md.",
        "",
    ]
    for name, command in scripts.items():
        lines += _command_lines(command, name, 2)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> None:
    """``python -m diffratio.docgen`` writes docs/recipes.md's text; ``... cli`` writes docs/cli.md's."""
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["recipes"], ["cli"]):
        sys.exit(f"usage: {COMMAND}\n       {CLI_COMMAND}")
    sys.stdout.write(render_cli() if args == ["cli"] else render())


if __name__ == "__main__":
    main()
