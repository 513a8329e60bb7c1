"""Alert rules: a YAML file, validated by pydantic, with errors that name their line.

Data flow::

    rules.yaml --yaml.compose--> node tree (line marks) --construct--> plain data
               --pydantic--> RuleFile(defaults, rules[])            (errors -> FILE:LINE: path: msg)

A rule compares one vitals field (or ``no_data``, the seconds since the patient's last vitals
message) with a threshold::

    defaults:
      gate: {max_uncertainty_mv: 0.05, min_sqi: 0.6}   # morphology gate (st_*, qtc_ms, qrs_ms)
      repeat: 10m                                       # re-notify a firing alert this often
    rules:
      - name: hr_high
        metric: hr_bpm
        op: ">"
        threshold: 120
        for: 30s                 # condition must hold this long before the alert fires
        clear_threshold: 110     # hysteresis: resolves only once hr_bpm <= 110 ...
        clear_for: 10s           # ... for 10 s
        priority: medium         # high | medium | low (IEC 60601-1-8 alarm priorities)
        labels: {team: ward-3}
        summary: "HR {value:.0f} bpm > {threshold:g} bpm"
      - name: rr_irregular
        metric: rr_irregularity
        op: ">"
        threshold: 0.10
        rate_agreement: 0.05     # only windows whose ECG rate is within 5 % of the PPG's

Validation is strict: unknown keys, unknown metrics, bad durations, duplicate rule names, a
``clear_threshold`` on the unsafe side of ``threshold`` and templates with unknown
placeholders are all rejected; every problem is reported as ``FILE:LINE: rules[2].for: msg``
with the line of the offending YAML node (taken from the node marks of ``yaml.compose``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from p2es.contracts.vitals import MORPHOLOGY_METRICS, VITALS_METRICS
from p2es.contracts.vitals import UNITS as VITALS_UNITS
from p2es.errors import P2esError

__all__ = [
    "METRICS",
    "MORPHOLOGY_METRICS",
    "VITALS_METRICS",
    "Gate",
    "Defaults",
    "Rule",
    "RuleFile",
    "RuleFileError",
    "parse_duration",
    "format_duration",
    "load_rules",
    "load_rules_text",
    "DEFAULT_RULES_PATH",
]

#: ``no_data`` = seconds since the last vitals message of the patient (wall clock, on ticks)
METRICS: tuple[str, ...] = VITALS_METRICS + ("no_data",)
#: units used in messages
UNITS: dict[str, str] = {**VITALS_UNITS, "no_data": "s"}

DEFAULT_RULES_PATH = Path(__file__).with_name("default_rules.yaml")

_DUR_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DUR_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def parse_duration(v: Any) -> float:
    """``"30s"``, ``"2m"``, ``"1h30m"``, ``"500ms"`` or a number of seconds -> seconds (>= 0)."""
    if isinstance(v, bool):
        raise ValueError("a duration must be like 30s, 2m, 1h30m or a number of seconds")
    if isinstance(v, (int, float)):
        s = float(v)
    elif isinstance(v, str):
        text = v.strip()
        pos, s, n = 0, 0.0, 0
        for m in _DUR_RE.finditer(text):
            if m.start() != pos:
                break
            s += float(m.group(1)) * _DUR_UNITS[m.group(2)]
            pos, n = m.end(), n + 1
        if n == 0 or pos != len(text):
            raise ValueError(f"bad duration {v!r}: use e.g. 30s, 2m, 1h30m, 500ms")
    else:
        raise ValueError(f"a duration must be a string like 30s or a number, not {type(v).__name__}")
    if not math.isfinite(s) or s < 0:
        raise ValueError(f"a duration must be finite and >= 0, got {v!r}")
    return s


def format_duration(s: float) -> str:
    """Seconds -> a short text (``90`` -> ``1m30s``)."""
    if s < 1 and s > 0:
        return f"{s * 1000:g}ms"
    out, rest = "", float(s)
    for unit, k in (("h", 3600.0), ("m", 60.0)):
        if rest >= k:
            q = int(rest // k)
            out += f"{q}{unit}"
            rest -= q * k
    if rest or not out:
        out += f"{rest:g}s"
    return out


Duration = Annotated[float, BeforeValidator(parse_duration)]


class Gate(BaseModel):
    """Quality gate: a window is evaluated only if ``uncertainty <= max_uncertainty_mv`` and
    ``sqi >= min_sqi`` (a null uncertainty/SQI fails the gate), and, when ``max_hr_bpm`` is
    set, ``max(hr_bpm, hr_ppg_bpm) <= max_hr_bpm`` (the faster of the reconstructed and the PPG
    rate; both null fails): ST measured at a fixed J + 60 ms
    runs into the T wave at fast rates, so ST rules hold their evaluation during tachycardia."""

    model_config = ConfigDict(extra="forbid")

    max_uncertainty_mv: float = Field(0.05, gt=0)
    min_sqi: float = Field(0.6, ge=0, le=1)
    max_hr_bpm: float | None = Field(None, gt=0)


class GateOverride(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_uncertainty_mv: float | None = Field(None, gt=0)
    min_sqi: float | None = Field(None, ge=0, le=1)
    max_hr_bpm: float | None = Field(None, gt=0)


class Defaults(BaseModel):
    """File-level defaults (every rule may override them)."""

    model_config = ConfigDict(extra="forbid")

    gate: Gate = Field(default_factory=Gate)
    repeat: Duration = 600.0  # 0 = never re-notify
    max_gap: Duration = 60.0  # a pending condition restarts after this long without an evaluated window
    forget_after: Duration = 3600.0  # no_data: stop watching a patient silent for this long


_TEMPLATE_FIELDS = {
    "patient": "bed-1",
    "rule": "r",
    "metric": "hr_bpm",
    "op": ">",
    "threshold": 1.0,
    "clear_threshold": 1.0,
    "value": 1.0,
    "unit": "bpm",
    "priority": "high",
    "for": "30s",
    "gate": "",
    "labels": {},
}


class Rule(BaseModel):
    """One alert rule (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str
    metric: Literal[METRICS]  # type: ignore[valid-type]  # the Literal's values are built at run time from the vitals contract
    op: Literal[">", ">=", "<", "<="]
    threshold: float
    for_: Duration = Field(0.0, alias="for")
    clear_threshold: float | None = None
    clear_for: Duration = 0.0
    priority: Literal["high", "medium", "low"] = "medium"
    repeat: Duration | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    summary: str = "{metric} {value:g} {op} {threshold:g}"
    description: str = ""
    gate: GateOverride | None = None
    # Rhythm metrics are measured on the reconstruction; a window counts only when its rate
    # agrees with the PPG's own pulse rate: |hr_bpm - hr_ppg_bpm| <= rate_agreement * hr_ppg_bpm
    # (either null: the window is skipped).  A reconstruction that missed or added a beat
    # then cannot raise an irregular-rhythm alert.
    rate_agreement: float | None = Field(None, gt=0, le=1)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError("a rule name must match [A-Za-z0-9_.-]{1,64}")
        return v

    @field_validator("threshold", "clear_threshold")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for k in v:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k):
                raise ValueError(f"label name {k!r} must match [A-Za-z_][A-Za-z0-9_]*")
            if k in ("alertname", "patient", "priority"):
                raise ValueError(f"label {k!r} is set by p2es and cannot be overridden")
        return v

    @field_validator("summary", "description")
    @classmethod
    def _template(cls, v: str) -> str:
        try:
            v.format_map(_TEMPLATE_FIELDS)
        except KeyError as e:
            raise ValueError(
                f"unknown placeholder {{{e.args[0]}}}; use one of " + ", ".join(sorted(_TEMPLATE_FIELDS))
            ) from None
        except (ValueError, IndexError, AttributeError) as e:
            raise ValueError(f"bad template: {e}") from None
        return v

    @model_validator(mode="after")
    def _hysteresis(self) -> Rule:
        c = self.clear_threshold
        if c is not None:
            if self.op in (">", ">=") and c > self.threshold:
                raise ValueError(
                    f"clear_threshold {c:g} must be <= threshold {self.threshold:g} "
                    f"for op '{self.op}' (the safe side)"
                )
            if self.op in ("<", "<=") and c < self.threshold:
                raise ValueError(
                    f"clear_threshold {c:g} must be >= threshold {self.threshold:g} "
                    f"for op '{self.op}' (the safe side)"
                )
        if self.metric == "no_data" and self.op not in (">", ">="):
            raise ValueError("op must be '>' or '>=' for a no_data rule (seconds since the last vitals)")
        if self.metric == "no_data" and self.gate is not None:
            raise ValueError("gate is not allowed on a no_data rule")
        if self.metric == "no_data" and self.rate_agreement is not None:
            raise ValueError("rate_agreement is not allowed on a no_data rule")
        return self

    # -- evaluation helpers (pure) -------------------------------------------------------
    @property
    def clear_level(self) -> float:
        return self.threshold if self.clear_threshold is None else self.clear_threshold

    def breaches(self, value: float) -> bool:
        """True when ``value`` meets the firing condition."""
        return _cmp(self.op, value, self.threshold)

    def still_active(self, value: float) -> bool:
        """While firing: True unless ``value`` is on the safe side of ``clear_threshold``."""
        return _cmp(self.op, value, self.clear_level)

    def gated(self) -> bool:
        return self.metric in MORPHOLOGY_METRICS or self.gate is not None


def _cmp(op: str, a: float, b: float) -> bool:
    if op == ">":
        return a > b
    if op == ">=":
        return a >= b
    if op == "<":
        return a < b
    return a <= b


class RuleFile(BaseModel):
    """A whole rules file: ``defaults`` and ``rules``."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    defaults: Defaults = Field(default_factory=Defaults)
    rules: list[Rule]

    def gate_for(self, rule: Rule) -> Gate | None:
        """The effective gate of a rule (file defaults overridden per rule), None if ungated."""
        if not rule.gated():
            return None
        g = self.defaults.gate
        o = rule.gate
        if o is None:
            return g
        return Gate(
            max_uncertainty_mv=o.max_uncertainty_mv
            if o.max_uncertainty_mv is not None
            else g.max_uncertainty_mv,
            min_sqi=o.min_sqi if o.min_sqi is not None else g.min_sqi,
            max_hr_bpm=o.max_hr_bpm if o.max_hr_bpm is not None else g.max_hr_bpm,
        )

    def repeat_for(self, rule: Rule) -> float:
        return self.defaults.repeat if rule.repeat is None else rule.repeat

    def by_name(self) -> dict[str, Rule]:
        return {r.name: r for r in self.rules}


# ------------------------------------------------------------------------------ loading
@dataclass(frozen=True)
class Problem:
    line: int  # 1-based
    path: str
    message: str

    def format(self, filename: str) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{filename}:{self.line}: {where}{self.message}"


class RuleFileError(P2esError):
    """Invalid rules file; ``lines`` holds one ``FILE:LINE: path: msg`` per problem."""

    def __init__(self, filename: str, problems: list[Problem]) -> None:
        self.filename = filename
        self.problems = sorted(problems, key=lambda p: (p.line, p.path))
        self.lines = [p.format(filename) for p in self.problems]
        more = (
            f" (and {len(self.lines) - 1} more problem(s); run 'p2es alerts check')"
            if len(self.lines) > 1
            else ""
        )
        super().__init__(self.lines[0] + more if self.lines else f"{filename}: invalid rules file")


def _loc_text(loc: tuple[Any, ...]) -> str:
    out = ""
    for p in loc:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out


def _node_at(root: yaml.Node | None, loc: tuple[Any, ...]) -> tuple[yaml.Node | None, bool]:
    """The deepest node along ``loc`` (and whether it was reached fully).  For a mapping key,
    the *key* node when the value is missing (unknown key) -- else the value node."""
    node = root
    for _i, p in enumerate(loc):
        if isinstance(node, yaml.MappingNode):
            hit = None
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == str(p):
                    hit = (k, v)
            if hit is None:
                return node, False
            node = hit[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(p, int) and 0 <= p < len(node.value):
            node = node.value[p]
        else:
            return node, False
    return node, True


def _key_node(root: yaml.Node | None, loc: tuple[Any, ...]) -> yaml.Node | None:
    """The key node of the last element of ``loc`` (for 'extra key' errors)."""
    if not loc:
        return None
    parent, ok = _node_at(root, loc[:-1])
    if ok and isinstance(parent, yaml.MappingNode):
        for k, _v in parent.value:
            if isinstance(k, yaml.ScalarNode) and k.value == str(loc[-1]):
                return k
    return None


def _line(node: yaml.Node | None) -> int:
    return node.start_mark.line + 1 if node is not None else 1


def _duplicate_keys(node: yaml.Node, path: tuple[Any, ...], out: list[Problem]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else None
            if key is not None and key in seen:
                out.append(Problem(_line(k), _loc_text(path + (key,)), "duplicate key"))
            if key is not None:
                seen.add(key)
            _duplicate_keys(v, path + ((key if key is not None else "?"),), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _duplicate_keys(v, path + (i,), out)


def _message(err: Mapping[str, Any]) -> str:
    t, msg = err.get("type", ""), str(err.get("msg", "invalid"))
    if t == "extra_forbidden":
        return "unknown key"
    if t == "missing":
        return "missing required key"
    if t == "literal_error":
        ctx = err.get("ctx") or {}
        exp = ctx.get("expected")
        got = err.get("input")
        return f"got {got!r}; expected one of {exp}" if exp else msg
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    return msg


def load_rules_text(text: str, filename: str = "<rules>") -> RuleFile:
    """Parse and validate rules from YAML text; :class:`RuleFileError` lists every problem."""
    try:
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            data = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise RuleFileError(filename, [Problem(line, "", f"YAML syntax: {e.problem or e.context}")]) from None
    except yaml.YAMLError as e:
        raise RuleFileError(filename, [Problem(1, "", f"YAML: {e}")]) from None
    problems: list[Problem] = []
    if root is not None:
        _duplicate_keys(root, (), problems)
    if not isinstance(data, dict):
        raise RuleFileError(
            filename, problems + [Problem(_line(root), "", "the file must be a mapping with a 'rules' list")]
        )
    try:
        rf = RuleFile.model_validate(data)
    except ValidationError as e:
        for err in e.errors(include_url=False):
            loc = tuple(err.get("loc", ()))
            # pydantic puts model_validator errors at the model; field errors at the field
            if err.get("type") == "extra_forbidden":
                node = _key_node(root, loc) or _node_at(root, loc)[0]
            else:
                node, ok = _node_at(root, loc)
                msg = _message(err)
                if ok and isinstance(node, yaml.MappingNode) and err.get("type") == "value_error":
                    # a model-level check (e.g. hysteresis): point at the key it names
                    hits = []
                    for k, _v in node.value:
                        m = (
                            re.search(rf"\b{re.escape(k.value)}\b", msg)
                            if isinstance(k, yaml.ScalarNode)
                            else None
                        )
                        if m:
                            hits.append((m.start(), k))
                    if hits:
                        k = min(hits, key=lambda h: h[0])[1]
                        node, loc = k, loc + (k.value,)
            problems.append(Problem(_line(node), _loc_text(loc), _message(err)))
        raise RuleFileError(filename, problems) from None
    # cross-rule checks
    seen: dict[str, int] = {}
    rules_node = None
    if isinstance(root, yaml.MappingNode):
        for k, v in root.value:
            if isinstance(k, yaml.ScalarNode) and k.value == "rules":
                rules_node = v
    for i, r in enumerate(rf.rules):
        if r.name in seen:
            node, _ = _node_at(rules_node, (i, "name"))
            problems.append(
                Problem(
                    _line(node),
                    f"rules[{i}].name",
                    f"duplicate rule name {r.name!r} (first at rules[{seen[r.name]}])",
                )
            )
        else:
            seen[r.name] = i
    if problems:
        raise RuleFileError(filename, problems)
    return rf


def load_rules(path: str | Path | None = None) -> RuleFile:
    """Load a rules file (default: the shipped ``alerts/default_rules.yaml``)."""
    p = Path(path) if path is not None else DEFAULT_RULES_PATH
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise P2esError(f"rules file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise P2esError(f"cannot read rules file {p}: {e}") from None
    return load_rules_text(text, str(p))
