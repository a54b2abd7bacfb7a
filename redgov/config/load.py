"""Reading a configuration: a file, YAML/JSON text or a mapping -> a bounded Python document.

YAML goes through a SafeLoader (libyaml's when present) that reads numbers as
YAML 1.2 does (``17:00`` stays a string) and records repeated keys. The composed
node graph is measured before anything is constructed: aliases may not add more
than MAX_NODES nodes to the document (a "billion laughs" document of a few hundred
bytes would otherwise take seconds and gigabytes), may not refer to a collection
that contains them, and nesting stops at MAX_NESTING levels. JSON text and mappings
given directly are measured the same way.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from .check import Duplicates, check_document
from .explain import prefixed
from .model import GovernanceConfig

__all__ = ["MAX_FILE_BYTES", "MAX_NESTING", "MAX_NODES", "load_config", "parse", "read"]

#: the largest configuration file read
MAX_FILE_BYTES = 8 * 1024 * 1024
#: the most nodes (mappings, lists, keys and scalars) aliases may add to a document when expanded
MAX_NODES = 10_000
#: the deepest nesting of a document (values are held to 64 levels by ``redgov.validate.check_data``)
MAX_NESTING = 128
_SUFFIXES = (".yaml", ".yml", ".json")


def load_config(source: str | os.PathLike[str] | Mapping[str, Any], *,
                env: Mapping[str, str] | None = None) -> GovernanceConfig:
    """A GovernanceConfig from ``source``: a YAML/JSON file path, YAML/JSON text, or a parsed mapping.

    A PathLike is a path; so is a one-line str naming an existing file or folder,
    ending in .yaml/.yml/.json, or holding no ``:`` (it cannot be a configuration).
    ``env`` replaces ``os.environ`` for ``${NAME}``. Raises ConfigError naming the
    file, and every problem found with its dotted path and value (``errors`` lists them).
    """
    if isinstance(source, Mapping):
        document: object = dict(source)
        _bound(document, _python_children, _python_where, "")
        duplicates: Duplicates = {}
        where = ""
    else:
        text, where, json_file = read(source)
        document, duplicates = parse(text, where, json_file)
    return check_document(document, env=os.environ if env is None else env, duplicates=duplicates, where=where)


def read(source: object) -> tuple[str, str, bool]:
    """(text, file name or "", is a .json file) of a path or of text; ConfigError naming the path."""
    if isinstance(source, os.PathLike):
        path = Path(os.fspath(source))
    elif isinstance(source, str):
        line = source.strip()
        one_line = "\n" not in source and "\r" not in source
        if not (one_line and line and (line.lower().endswith(_SUFFIXES) or os.path.exists(line)
                                       or (":" not in line and not line.startswith(("{", "["))))):
            return source, "", False
        path = Path(line)
    else:
        raise ConfigError(f"a configuration source must be a path, YAML/JSON text or a mapping, "
                          f"got {type(source).__name__}")
    name = str(path)
    if path.is_dir():
        raise ConfigError(f"{name!r} is a folder, not a configuration file; name a YAML or JSON file in it")
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {name!r} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{name!r} is a folder, not a configuration file; name a YAML or JSON file in it") from None
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {name!r}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"configuration file {name!r} is larger than {MAX_FILE_BYTES // 2**20} MiB")
    try:
        return data.decode("utf-8-sig"), name, path.suffix.lower() == ".json"
    except UnicodeDecodeError as exc:
        raise ConfigError(f"configuration file {name!r} is not UTF-8 text (byte {exc.start} is "
                          f"{data[exc.start]:#04x})") from None


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """SafeLoader, YAML 1.2 numbers (17:00 stays a string), duplicate keys recorded."""

    duplicates: Duplicates


_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_INT, re.compile(
    r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"), list("-+0123456789"))
_Loader.add_implicit_resolver(_FLOAT, re.compile(
    r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"), list("-+0123456789."))


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> Iterator[dict[Any, Any]]:
    data: dict[Any, Any] = {}
    yield data
    seen: set[str] = set()
    for key_node, _ in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
            if key_node.value in seen and id(data) not in loader.duplicates:
                mark = key_node.start_mark
                loader.duplicates[id(data)] = (key_node.value, f"line {mark.line + 1}, column {mark.column + 1}")
            seen.add(key_node.value)
    data.update(loader.construct_mapping(node))


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)


def parse(text: str, where: str = "", json_file: bool = False) -> tuple[object, Duplicates]:
    """(document, repeated keys) of YAML or JSON ``text``; ConfigError with line and column (``where``: the file)."""
    duplicates: Duplicates = {}
    if json_file or text.lstrip().startswith(("{", "[")):
        def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
            data: dict[str, Any] = {}
            for key, value in items:
                if key in data and id(data) not in duplicates:
                    duplicates[id(data)] = (key, "JSON object")
                data[key] = value
            return data

        try:
            document = json.loads(text, object_pairs_hook=pairs)
        except json.JSONDecodeError as exc:
            raise ConfigError(prefixed(where, f"JSON syntax error at line {exc.lineno}, column {exc.colno}: "
                                              f"{exc.msg}")) from None
        except RecursionError:
            raise ConfigError(prefixed(where, f"JSON nested deeper than {MAX_NESTING} levels")) from None
        _bound(document, _python_children, _python_where, where)
        return document, duplicates
    loader = _Loader(text)
    loader.duplicates = duplicates
    try:
        node = loader.get_single_node()
        if node is None:
            return None, duplicates
        _bound(node, _node_children, _node_where, where)
        return loader.construct_document(node), duplicates
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        detail = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem:
            detail = f"{exc.problem} ({exc.context})"
        raise ConfigError(prefixed(where, f"YAML syntax error{at}: {detail}")) from None
    except yaml.YAMLError as exc:
        raise ConfigError(prefixed(where, f"YAML syntax error: {exc}")) from None
    except RecursionError:  # the pure-Python composer on deep nesting (libyaml stops at 1000 levels)
        raise ConfigError(prefixed(where, f"YAML nested deeper than {MAX_NESTING} levels")) from None
    finally:
        loader.dispose()


# -- bounds ---------------------------------------------------------------------------

def _node_children(node: Any) -> Iterable[tuple[object, Any]] | None:
    if isinstance(node, yaml.MappingNode):
        return ((None, part) for pair in node.value for part in pair)
    if isinstance(node, yaml.SequenceNode):
        return ((None, item) for item in node.value)
    return None


def _node_where(trail: list[object], node: Any) -> str:
    mark = node.start_mark
    return f"at line {mark.line + 1}, column {mark.column + 1}"


def _python_children(value: Any) -> Iterable[tuple[object, Any]] | None:
    if isinstance(value, Mapping):
        return value.items()
    if isinstance(value, list | tuple):
        return enumerate(value)
    return None


def _python_where(trail: list[object], value: Any) -> str:
    path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in trail).lstrip(".")
    return f"at {path[:77] + '...' if len(path) > 80 else path or 'the root'}"


def _bound(root: Any, children: Callable[[Any], Iterable[tuple[object, Any]] | None],
           where_of: Callable[[list[object], Any], str], where: str) -> None:
    """ConfigError when aliases add more than MAX_NODES nodes to ``root``, a collection holds itself or
    nesting passes MAX_NESTING. A shared collection (a YAML alias) is measured once: linear time."""
    sizes: dict[int, int] = {}  # id of a finished collection -> its expanded size
    stack: list[tuple[Any, Iterator[tuple[object, Any]], object]] = []
    sums: list[int] = []  # expanded size so far of each open collection
    open_ids: set[int] = set()
    repeated = 0  # nodes the aliases met so far add

    def fail(problem: str, label: object, node: Any) -> ConfigError:
        trail = [entry[2] for entry in stack[1:]] + [label]
        return ConfigError(prefixed(where, f"{problem} ({where_of(trail, node)})"))

    label: object = None
    node: Any = root
    while True:
        items = children(node)
        if items is None:
            size = 1
        elif id(node) in sizes:  # an alias of a finished collection: its size, not another walk
            size = sizes[id(node)]
            repeated += size
            if repeated > MAX_NODES:
                raise fail(f"aliases (references to one collection) expand the document by more than "
                           f"{MAX_NODES:,} nodes; a configuration needs far fewer", label, node)
        elif id(node) in open_ids:
            raise fail("an alias refers to a collection that contains it; a configuration cannot be recursive",
                       label, node)
        elif len(stack) >= MAX_NESTING:
            raise fail(f"the document is nested deeper than {MAX_NESTING} levels", label, node)
        else:
            stack.append((node, iter(items), label))
            sums.append(1)
            open_ids.add(id(node))
            size = 0
        if size and stack:
            sums[-1] += size
        # the next child of the innermost open collection; finished collections pass their size up
        while stack:
            step = next(stack[-1][1], None)
            if step is not None:
                label, node = step
                break
            done, _, _ = stack.pop()
            open_ids.discard(id(done))
            sizes[id(done)] = finished = sums.pop()
            if sums:
                sums[-1] += finished
        else:
            return
