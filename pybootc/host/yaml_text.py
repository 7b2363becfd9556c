"""The Host document as YAML, written and read the way bootc's serde_yaml does.

serde_yaml writes an enum's newtype variant as a tag (`!ostreeRemote fedora`) and reads
scalars by the field's type, so `2023-10-14T19:22:15Z` and `20231230.1` stay text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from pybootc.errors import BootcError
from pybootc.host.fields import JsonDict

_STR_TAG = "tag:yaml.org,2002:str"
_PRINTABLE_ASCII = re.compile(r"[!-~]+(?: [!-~]+)*")
_UNICODE_BREAKS = re.compile("[\x85\u2028\u2029]")


@dataclass(frozen=True)
class _TaggedScalar:
    tag: str
    value: str


def _tag_signatures(value: Any) -> Any:
    if isinstance(value, list):
        return [_tag_signatures(item) for item in value]
    if not isinstance(value, dict):
        return value
    out: JsonDict = {}
    for key, item in value.items():
        if key == "signature" and isinstance(item, dict):
            ((variant, name),) = item.items()
            out[key] = _TaggedScalar(variant, name)
        else:
            out[key] = _tag_signatures(item)
    return out


_INT = re.compile(r"[+-]?(?:0x[0-9a-fA-F]+|0o[0-7]+|0b[01]+|[0-9]+)")
# What Rust's f64 parsing takes, finite: digits with a point and an exponent, each optional.
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_SPECIAL_FLOATS = {".inf", ".Inf", ".INF", "-.inf", "-.Inf", "-.INF", ".nan", ".NaN", ".NAN"}


def _serde_yaml_tag(text: str) -> str:
    """What serde_yaml would read the plain scalar `text` as (its serializer quotes a
    string exactly when this is not `str`): null, a boolean, an integer, a float,
    digits with a leading zero, or text. A timestamp, `yes` or `on` is text to it."""
    if text in ("", "~", "null", "Null", "NULL"):
        return "tag:yaml.org,2002:null"
    if text in ("true", "True", "TRUE", "false", "False", "FALSE"):
        return "tag:yaml.org,2002:bool"
    if _INT.fullmatch(text):
        return "tag:yaml.org,2002:int"
    if text in _SPECIAL_FLOATS or _FLOAT.fullmatch(text):
        return "tag:yaml.org,2002:float"
    return _STR_TAG


class _HostYamlDumper(yaml.SafeDumper):
    """A SafeDumper that quotes text as serde_yaml does (what it would read as something
    else, no more), and writes _TaggedScalar as a local tag, unquoted where it can."""

    def resolve(self, kind: type[yaml.Node], value: Any, implicit: tuple[bool, bool]) -> str:
        if kind is yaml.ScalarNode and implicit[0]:
            return _serde_yaml_tag(value)
        return str(super().resolve(kind, value, implicit))  # type: ignore[no-untyped-call]

    def choose_scalar_style(self) -> str:
        event = self.event
        if isinstance(event, yaml.ScalarEvent) and _UNICODE_BREAKS.search(event.value):
            # PyYAML folds these inside single quotes, changing the text; escape them.
            return '"'
        # PyYAML quotes every explicitly tagged scalar; serde_yaml writes plain text plainly.
        if isinstance(event, yaml.ScalarEvent) and (event.tag or "").startswith("!"):
            analysis = self.analysis = self.analysis or self.analyze_scalar(event.value)
            implicit = self.resolve(yaml.ScalarNode, event.value, (True, False))
            plain_text = implicit == _STR_TAG and _PRINTABLE_ASCII.fullmatch(event.value)
            if plain_text and analysis.allow_block_plain and not analysis.multiline:
                return ""
        return str(super().choose_scalar_style())


def _represent_tagged(dumper: yaml.SafeDumper, data: _TaggedScalar) -> yaml.ScalarNode:
    return dumper.represent_scalar(f"!{data.tag}", data.value)


_HostYamlDumper.add_representer(_TaggedScalar, _represent_tagged)


class _HostYamlLoader(yaml.SafeLoader):
    """A SafeLoader that resolves only null, booleans and plain decimal integers."""


_HostYamlLoader.yaml_implicit_resolvers = {}
for _tag, _pattern, _first in (
    ("null", r"~|null|Null|NULL|", ["~", "n", "N", ""]),
    ("bool", r"true|True|TRUE|false|False|FALSE", list("tTfF")),
    # No leading zero and no "+", so that the number turned back into text loses nothing.
    ("int", r"0|-?[1-9][0-9]*", list("-0123456789")),
):
    _HostYamlLoader.add_implicit_resolver(
        f"tag:yaml.org,2002:{_tag}", re.compile(f"^(?:{_pattern})$"), _first
    )


def _construct_local_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> JsonDict:
    if isinstance(node, yaml.ScalarNode):
        return {suffix: loader.construct_scalar(node)}
    if isinstance(node, yaml.MappingNode):
        return {suffix: loader.construct_mapping(node, deep=True)}
    if isinstance(node, yaml.SequenceNode):
        return {suffix: loader.construct_sequence(node, deep=True)}
    raise yaml.constructor.ConstructorError(None, None, f"unknown tag !{suffix}", node.start_mark)


_HostYamlLoader.add_multi_constructor("!", _construct_local_tag)


def dump_yaml(document: JsonDict) -> str:
    """YAML with keys in bootc's order; an ostree remote signature as `!ostreeRemote NAME`."""
    return yaml.dump(
        _tag_signatures(document),
        Dumper=_HostYamlDumper,
        sort_keys=False,
        allow_unicode=True,
        width=2**31 - 1,
    )


def load_yaml(text: str) -> object:
    """Read YAML the way serde_yaml reads it into bootc's types (see _HostYamlLoader)."""
    try:
        return yaml.load(text, Loader=_HostYamlLoader)
    except yaml.YAMLError as err:
        # PyYAML says where over several lines; an error here is one line.
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None)
        if mark is not None and problem:
            where = f"line {mark.line + 1}, column {mark.column + 1}"
            raise BootcError(f"Invalid host document: {problem} at {where}") from None
        raise BootcError(f"Invalid host document: {' '.join(str(err).split())}") from None
    except RecursionError:
        # PyYAML composes nested collections recursively; a host document is a few
        # levels deep, and serde_yaml refuses deep ones too (its recursion limit).
        raise BootcError("Invalid host document: it nests too deeply") from None
