"""Reading a config file's YAML: the safe (C) loader, alias expansion capped, duplicate keys refused,
syntax errors as one line."""

from __future__ import annotations

from typing import Any

from gradcheck_cli.config_values import show
from gradcheck_cli.errors import InputError


# A YAML document may use aliases (&a / *a) to repeat a value; nested, a few hundred bytes expand to
# billions of values ("billion laughs"). Configs are small: more than this many values is refused.
MAX_YAML_VALUES = 100_000


def _yaml_loader() -> Any:
    import yaml

    return getattr(yaml, "CSafeLoader", None) or yaml.SafeLoader   # the C loader when libyaml is there


def parse_yaml(text: str, p: str) -> Any:
    """safe_load with three guards: alias expansion capped, duplicate keys refused (naming both lines),
    and syntax errors as one line."""
    import yaml

    loader = _yaml_loader()
    try:
        node = yaml.compose(text, Loader=loader)
        if node is None:
            return None
        _check_nodes(node, p)
        return yaml.load(text, Loader=loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(f"{p}: YAML syntax error{where}: {show(problem, 120)}") from None
    except RecursionError:
        raise InputError(f"{p}: YAML nested too deeply") from None


def _check_nodes(root: Any, p: str) -> None:
    """Walk the composed document as it would expand (an alias counts each time it is used): refuse
    more than MAX_YAML_VALUES values, and mappings that give one key twice."""
    import yaml

    budget = MAX_YAML_VALUES
    stack = [root]
    seen_maps: set[int] = set()
    while stack:
        node = stack.pop()
        budget -= 1
        if budget < 0:
            raise InputError(f"{p}: the YAML expands to more than {MAX_YAML_VALUES:,} values (aliases "
                             "nested inside aliases?)", hint="write the settings out; configs are small")
        if isinstance(node, yaml.MappingNode):
            if id(node) not in seen_maps:
                seen_maps.add(id(node))
                first: dict[Any, int] = {}
                for k, _ in node.value:
                    if isinstance(k, yaml.ScalarNode) and k.value != "<<":
                        line = k.start_mark.line + 1
                        if k.value in first:
                            raise InputError(f"{p}: key {show(k.value)} appears twice (lines {first[k.value]} "
                                             f"and {line}); YAML would silently keep only the second",
                                             hint="merge the two into one")
                        first[k.value] = line
            for k, v in node.value:
                stack.append(k)
                stack.append(v)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)

