"""Three mutation operators Cosmic Ray does not have, for the slips that change a table or a
fingerprint without failing a test: an entry dropped from a dict (or a list of names), two
neighbouring values swapped, and a rounding turned the other way.

Each is a Cosmic Ray `Operator` (positions on the parso tree, one mutation per position), so
`cosmic_ray.mutating.mutate_code` applies it like its own. scripts/mutants.py enumerates them
beside Cosmic Ray's; they are not registered as a plugin (that would need an installed package
with an entry point for three small classes).

    DropEntry           {"run": r, "step": s}  →  {"step": s};  dict(a=1, b=2) → dict(b=2);
                        ["lr", "batch"] → ["batch"]  (a list, tuple or set of string literals:
                        the column lists and fingerprint fields)
    SwapAdjacentValues  {"low": lo, "high": hi}  →  {"low": hi, "high": lo};  same for dict(...)
    RoundingReplacer    ceil ↔ floor, round → int  (a call: math.ceil(x), np.floor(x), round(x))
"""
from __future__ import annotations

import parso.python.tree as tree
from cosmic_ray.operators.operator import Example, Operator


def _groups(children: list) -> list[list]:
    """The comma-separated entries of a flat children list (a dict, a list, an argument list)."""
    groups, current = [], []
    for child in children:
        if child.type == "operator" and child.value == ",":
            groups.append(current)
            current = []
        else:
            current.append(child)
    if current:
        groups.append(current)
    return groups


def _is_dict_call(arglist) -> bool:
    """arglist of `dict(...)`: trailer '(' right after the name dict."""
    trailer = arglist.parent
    if trailer is None or trailer.type != "trailer" or trailer.children[0].value != "(":
        return False
    before = trailer.get_previous_sibling()
    return before is not None and before.type == "name" and before.value == "dict"


def _entries(node) -> tuple[str, list[list]] | None:
    """("dict" | "names", entries) when node holds droppable entries, else None."""
    if node.type == "dictorsetmaker":
        if any(c.type in ("comp_for", "sync_comp_for") for c in node.children):
            return None
        groups = _groups(node.children)
        if any(c.type == "operator" and c.value == ":" for c in node.children):
            return "dict", groups
        return ("names", groups) if all(len(g) == 1 and g[0].type == "string" for g in groups) else None
    if node.type == "testlist_comp" and node.parent is not None and node.parent.type == "atom":
        if any(c.type in ("comp_for", "sync_comp_for") for c in node.children):
            return None
        groups = _groups(node.children)
        return ("names", groups) if all(len(g) == 1 and g[0].type == "string" for g in groups) else None
    if node.type == "arglist" and _is_dict_call(node):
        return "dict", _groups(node.children)
    return None


def _span(group: list) -> tuple[tuple[int, int], tuple[int, int]]:
    return group[0].start_pos, group[-1].end_pos


class DropEntry(Operator):
    """Drop one entry of a dict display, a dict(...) call or a list/tuple/set of strings."""

    def mutation_positions(self, node):
        found = _entries(node)
        if found and len(found[1]) >= 2:
            for group in found[1]:
                yield _span(group)

    def mutate(self, node, index):
        groups = _entries(node)[1]
        keep = [g for i, g in enumerate(groups) if i != index]
        children = []
        for i, group in enumerate(keep):
            if i:
                children.append(tree.Operator(",", group[0].start_pos))
            children.extend(group)
        if len(keep) == 1 and node.parent.type == "atom" and node.parent.children[0].value == "(":
            children.append(tree.Operator(",", keep[0][-1].end_pos))  # ("a", "b") → ("b",): still a tuple
        node.children = children
        for child in children:
            child.parent = node
        return node

    @classmethod
    def examples(cls):
        return (
            Example("x = {'a': 1, 'b': 2}", "x = { 'b': 2}"),
            Example("x = dict(a=1, b=2)", "x = dict( b=2)"),
            Example("x = ('a', 'b')", "x = ('a',)", occurrence=1),
        )


def _values(node) -> list | None:
    """The value node of each entry of a dict display or dict(...) call, else None."""
    found = _entries(node)
    if not found or found[0] != "dict":
        return None
    values = []
    for group in found[1]:
        if len(group) == 3 and group[1].type == "operator" and group[1].value == ":":
            values.append(group[2])  # key: value
        elif (len(group) == 1 and group[0].type == "argument" and len(group[0].children) == 3
              and group[0].children[1].type == "operator" and group[0].children[1].value == "="):
            values.append(group[0].children[2])  # name=value
        else:
            values.append(None)  # **other
    return values


def _swappable(values: list) -> list[int]:
    return [i for i in range(len(values) - 1) if values[i] is not None and values[i + 1] is not None
            and values[i].get_code(include_prefix=False) != values[i + 1].get_code(include_prefix=False)]


class SwapAdjacentValues(Operator):
    """Swap the values of two neighbouring entries of a dict display or dict(...) call: the key
    written with its neighbour's value."""

    def mutation_positions(self, node):
        values = _values(node)
        for i in _swappable(values) if values else []:
            yield values[i].start_pos, values[i + 1].end_pos

    def mutate(self, node, index):
        values = _values(node)
        i = _swappable(values)[index]
        a, b = values[i], values[i + 1]
        code_a, code_b = a.get_code(include_prefix=False), b.get_code(include_prefix=False)
        pa, pb = a.get_first_leaf().prefix, b.get_first_leaf().prefix
        # replace each value by a leaf holding the other's code: parso writes it back verbatim
        for old, code, prefix in ((a, code_b, pa), (b, code_a, pb)):
            new = tree.Name(code, old.start_pos, prefix)
            siblings = old.parent.children
            siblings[siblings.index(old)] = new
            new.parent = old.parent
        return node

    @classmethod
    def examples(cls):
        return (Example("x = {'lo': a, 'hi': b}", "x = {'lo': b, 'hi': a}"),
                Example("x = dict(lo=a, hi=b)", "x = dict(lo=b, hi=a)"))


ROUNDING = {"ceil": "floor", "floor": "ceil", "round": "int"}


def _is_rounding_call(node) -> bool:
    if node.type != "name" or node.value not in ROUNDING:
        return False
    parent = node.parent
    if parent is None:
        return False
    if parent.type == "atom_expr" and parent.children[0] is node:  # round(x)
        after = node.get_next_sibling()
    elif parent.type == "trailer" and parent.children[0].value == ".":  # math.ceil(x)
        after = parent.get_next_sibling()
    else:
        return False
    return after is not None and after.type == "trailer" and after.children[0].value == "("


class RoundingReplacer(Operator):
    """ceil ↔ floor and round → int in a call: a count rounded the other way."""

    def mutation_positions(self, node):
        if _is_rounding_call(node):
            yield node.start_pos, node.end_pos

    def mutate(self, node, index):
        return tree.Name(ROUNDING[node.value], node.start_pos, node.prefix)

    @classmethod
    def examples(cls):
        return (Example("n = math.ceil(x)", "n = math.floor(x)"), Example("n = round(x)", "n = int(x)"))


OPERATORS = {"DropEntry": DropEntry, "SwapAdjacentValues": SwapAdjacentValues, "RoundingReplacer": RoundingReplacer}
