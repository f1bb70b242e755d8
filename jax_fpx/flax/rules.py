"""Per-layer quantization rules: an ordered list of (regex on the parameter path -> format, group size).

    rules = [
        QuantRule(r"(^|/)lm_head/", None),                         # keep dense
        QuantRule(r"/w2/kernel$", "fp6_e2m3", group_size=128),     # down projections: more mantissa
        QuantRule(r".*", "fp6_e3m2"),                              # everything else
    ]
    qparams = jax_fpx.flax.quantize_params(params, rules=rules)

The first rule whose ``pattern`` matches (``re.search``) a kernel's path string
(``"layers_0/attn/wq/kernel"``) decides; a kernel no rule matches stays dense. ``fmt=None``
(or ``"none"`` / ``"dense"`` in a file) keeps the matched kernels dense. In the spirit of Qwix's
``QuantizationRule``. Rules only ever apply to Dense kernels (2-D float ``kernel`` leaves);
embedding tables, norms and biases are never quantized.

Files (``load_rules``): JSON or YAML, either a list of rules or ``{"rules": [...]}``; each rule a
mapping with ``pattern``, ``fmt`` (a name like ``"fp6_e3m2"``, ``{"ebits": 3, "mbits": 2}``, or
``null`` / ``"none"`` for dense) and optional ``group_size``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Optional, Sequence, Union

from ..checkpoint.formats_json import fmt_from_json, fmt_to_json
from ..formats import FPxFormat, get_format

__all__ = ["QuantRule", "DEFAULT_RULES", "default_rules", "load_rules", "parse_rules", "rules_to_json", "match_rule", "as_rules"]

_DENSE_WORDS = ("none", "dense", "keep", "bf16", "bfloat16")


@dataclasses.dataclass(frozen=True)
class QuantRule:
    """``pattern`` (regex, ``re.search`` on the path) -> ``fmt`` (``None``: keep dense), ``group_size``."""

    pattern: str
    fmt: Optional[Union[str, FPxFormat, tuple]] = "fp6_e3m2"
    group_size: Optional[int] = None

    def __post_init__(self):
        try:
            re.compile(self.pattern)
        except re.error as e:
            raise ValueError(f"QuantRule pattern {self.pattern!r} is not a valid regex: {e}") from None
        fmt = self.fmt
        if isinstance(fmt, str) and fmt.lower() in _DENSE_WORDS:
            fmt = None
        if fmt is not None:
            fmt = get_format(fmt)
        object.__setattr__(self, "fmt", fmt)
        g = self.group_size
        if g is not None:
            if isinstance(g, bool) or not isinstance(g, int) or g <= 0 or g % 64:
                raise ValueError(f"QuantRule {self.pattern!r}: group_size must be None or a positive multiple of 64, got {g!r}")
            if fmt is None:
                raise ValueError(f"QuantRule {self.pattern!r}: group_size given for a dense (fmt=None) rule")

    @property
    def dense(self) -> bool:
        return self.fmt is None

    def to_dict(self) -> dict:
        return {"pattern": self.pattern, "fmt": fmt_to_json(self.fmt), "group_size": self.group_size}


#: Path regex of lm_head kernels (kept dense by default: the logits are the most sensitive layer).
LM_HEAD = r"(^|/)lm_head(/|$)"


def default_rules(fmt: Any = "fp6_e3m2", group_size: Optional[int] = None) -> tuple[QuantRule, ...]:
    """lm_head dense, every other Dense kernel ``fmt`` (``None``/``"none"``: everything dense)."""
    if fmt is None or (isinstance(fmt, str) and fmt.lower() in _DENSE_WORDS):
        return (QuantRule(r".*", None),)
    return (QuantRule(LM_HEAD, None), QuantRule(r".*", fmt, group_size))


DEFAULT_RULES = default_rules()


def parse_rules(obj: Any) -> tuple[QuantRule, ...]:
    """Rules from decoded JSON/YAML: a list of mappings, or ``{"rules": [...]}``."""
    if isinstance(obj, dict):
        if "rules" not in obj:
            raise ValueError(f"rules: expected a list or a mapping with a 'rules' key, got keys {sorted(obj)}")
        obj = obj["rules"]
    if not isinstance(obj, (list, tuple)):
        raise ValueError(f"rules: expected a list of rules, got {type(obj).__name__}")
    out = []
    for i, r in enumerate(obj):
        if isinstance(r, QuantRule):
            out.append(r)
            continue
        if not isinstance(r, dict) or "pattern" not in r:
            raise ValueError(f"rule {i}: expected a mapping with a 'pattern' key, got {r!r}")
        extra = set(r) - {"pattern", "fmt", "group_size"}
        if extra:
            raise ValueError(f"rule {i} ({r['pattern']!r}): unknown keys {sorted(extra)} (allowed: pattern, fmt, group_size)")
        fmt = r.get("fmt", "fp6_e3m2")
        if isinstance(fmt, dict):
            fmt = fmt_from_json(fmt)
        try:
            out.append(QuantRule(str(r["pattern"]), fmt, r.get("group_size")))
        except (ValueError, KeyError) as e:
            raise ValueError(f"rule {i} ({r['pattern']!r}): {e}") from None
    return tuple(out)


def load_rules(path: Union[str, os.PathLike]) -> tuple[QuantRule, ...]:
    """Rules from a ``.json`` or ``.yaml``/``.yml`` file (YAML needs PyYAML)."""
    path = os.fspath(path)
    with open(path) as f:
        text = f.read()
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise ImportError(f"{path}: reading YAML rules needs PyYAML (pip install pyyaml), or write the rules as JSON") from None
        obj = yaml.safe_load(text)
    else:
        obj = json.loads(text)
    try:
        return parse_rules(obj)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def as_rules(rules: Any) -> tuple[QuantRule, ...]:
    """Accepts a sequence of :class:`QuantRule`/mappings, a decoded file, or a path to a rules file."""
    if isinstance(rules, (str, os.PathLike)):
        return load_rules(rules)
    return parse_rules(list(rules) if not isinstance(rules, dict) else rules)


def rules_to_json(rules: Sequence[QuantRule]) -> str:
    return json.dumps([r.to_dict() for r in rules])


def match_rule(rules: Sequence[QuantRule], path: str) -> Optional[QuantRule]:
    """The first rule matching ``path`` (``None``: no rule matches, the kernel stays dense)."""
    for r in rules:
        if re.search(r.pattern, path):
            return r
    return None
