"""Reading YAML as a tree of nodes that remember their line, so every script error can name its line.

PyYAML's `compose` gives nodes with start marks; we walk those nodes instead of the constructed
Python values. Plain scalars keep their text as written (`- bob: yes` is the text "yes", not True),
and typed values (numbers) are built on demand with the safe constructor.
"""

from __future__ import annotations

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = [
    "MappingNode",
    "Node",
    "ScalarNode",
    "SequenceNode",
    "YamlSyntaxError",
    "compose",
    "line_of",
    "mapping_items",
    "scalar_text",
    "scalar_value",
]

_STR_TAG = "tag:yaml.org,2002:str"
_NULL_TAG = "tag:yaml.org,2002:null"


class YamlSyntaxError(Exception):
    """The text is not YAML; `line` is 1-based (None when PyYAML gave no position)."""

    def __init__(self, line: int | None, message: str):
        super().__init__(message)
        self.line = line
        self.message = message


def compose(text: str) -> Node | None:
    """The document's root node (None for an empty document); YamlSyntaxError on broken YAML."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        raise _syntax_error(error, text) from error
    except yaml.YAMLError as error:  # e.g. a reader error (bad characters) without a mark
        raise YamlSyntaxError(None, f"YAML syntax error: {error}") from error


def _syntax_error(error: yaml.MarkedYAMLError, text: str) -> YamlSyntaxError:
    """Where the problem is; for one found only at the end of the file (an unclosed quote or
    bracket), where the unfinished thing starts."""
    problem, context = error.problem_mark, error.context_mark
    mark = problem or context
    if problem is not None and context is not None and problem.index >= len(text.rstrip()):
        mark = context
    message = "YAML syntax error: " + (error.problem or "cannot read this")
    if error.context and context is not None:
        message += f" ({error.context} on line {context.line + 1})"
    elif error.context:
        message += f" ({error.context})"
    return YamlSyntaxError(mark.line + 1 if mark is not None else None, message)


def line_of(node: Node) -> int:
    """1-based line where the node starts."""
    return node.start_mark.line + 1


def mapping_items(node: MappingNode) -> list[tuple[ScalarNode | Node, Node]]:
    """(key node, value node) pairs, with `<<: *anchor` merge keys expanded."""
    yaml.constructor.SafeConstructor().flatten_mapping(node)
    return list(node.value)


def scalar_text(node: Node) -> str | None:
    """The text of a scalar as written (None for null / empty, or for a list or mapping)."""
    if not isinstance(node, ScalarNode):
        return None
    if node.tag == _NULL_TAG and node.style is None:
        return None
    return node.value


def scalar_value(node: Node):
    """The typed value of a scalar (int, float, bool, str, None); lists and mappings give None."""
    if not isinstance(node, ScalarNode):
        return None
    if node.tag == _STR_TAG:
        return node.value
    return yaml.constructor.SafeConstructor().construct_object(node, deep=True)
