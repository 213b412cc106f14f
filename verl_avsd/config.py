"""`algorithm.avsd.*`: defaults live in `config/avsd.yaml`; this module merges a run's keys onto
them and rejects what cannot be right (unknown keys, wrong types, inf/nan, out-of-range values)
at config time, with a message that names the key, before any Ray work starts.

The result is an `AvsdConfig`: typed, frozen, parsed once by the trainer and handed (as the
object, or as `to_dict()` across the worker transport) to everything that reads it."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import string
from collections.abc import Mapping
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

DEFAULTS_PATH = Path(__file__).parent / "config" / "avsd.yaml"

TEACHERS = ("ref", "current")
# where the teacher scores the views (verl_avsd/teacher_placement.py; not imported: it brings torch)
TEACHER_PLACEMENTS = ("actor", "rollout")
# verl_avsd.sandbox.runner.ISOLATIONS (not imported: the config stays free of the sandbox's imports)
SANDBOX_ISOLATIONS = ("auto", "bwrap", "unshare", "sandbox_fusion")
# chat-template arguments the teacher's context builder sets itself (teacher_context.build_teacher_contexts)
RESERVED_CHAT_TEMPLATE_KWARGS = ("conversation", "tokenize", "add_generation_prompt", "return_dict", "continue_final_message")
# The names view_template may use, as str.format fields (teacher_context.teacher_messages fills them).
TEMPLATE_FIELDS = ("prompt", "view", "view_name", "view_title")
MAX_TOKENS = 2**31 - 1  # token counts go into torch int tensors; past this a value is a typo

KEY = "algorithm.avsd"


class AvsdConfigError(ValueError):
    """A bad `algorithm.avsd.*` setting."""


class FrozenMap(dict):
    """A read-only dict (view_titles of a frozen AvsdConfig) that still pickles through Ray."""

    def _read_only(self, *args, **kwargs):
        raise TypeError(f"{KEY}.view_titles of a parsed AvsdConfig is read-only; use dataclasses.replace")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _read_only

    def __reduce__(self):  # pickle rebuilds through __init__, not through the refused __setitem__
        return (FrozenMap, (dict(self),))

    def __hash__(self):
        return hash(tuple(sorted(self.items())))


@dataclasses.dataclass(frozen=True)
class AvsdConfig:
    """The resolved `algorithm.avsd.*` options of a run. Each key is documented, with its default,
    in config/avsd.yaml (the hydra source of the defaults; the fields here have none). Build one
    with `avsd_config` (merge onto the defaults, check every value) or, on the far side of a
    transport that carries plain data, `AvsdConfig.from_dict(cfg.to_dict())`; the constructor
    itself checks nothing. Change one with `dataclasses.replace`."""

    views: tuple[str, ...]
    opsd_view: str
    teacher: str  # one of TEACHERS
    teacher_placement: str  # one of TEACHER_PLACEMENTS
    teacher_stream_tokens: int  # rollout placement on the hf server: score the views every N generated tokens (0 = at the end)
    view_template: str  # str.format with TEMPLATE_FIELDS (a command line's backslash-n is a newline here), or a preset name
    view_titles: Mapping[str, str]  # a FrozenMap
    teacher_chat_template_kwargs: Mapping[str, object] | None  # a FrozenMap; None = the student's
    max_view_tokens: int
    token_budget: int
    logprob_chunk_tokens: int
    share_prefix_min_tokens: int
    teacher_group_by_prompt: bool
    epistemic_tau: float
    epistemic_markers: tuple[str, ...]
    rlsd_lam: float
    rlsd_eps_w: float
    wrong_below: float
    credit_top_k: int
    gate_open_threshold: float
    dump_rollouts_dir: str | None
    sandbox_isolation: str  # one of SANDBOX_ISOLATIONS
    sandbox_max_concurrent: int | None
    sandbox_fusion_url: str | None

    def to_dict(self) -> dict:
        """Plain data (lists, dicts): for a transport that carries no objects, or OmegaConf.create."""
        return {
            f.name: (list(v) if isinstance(v, tuple) else dict(v) if isinstance(v, Mapping) else v)
            for f in dataclasses.fields(self)
            for v in [getattr(self, f.name)]
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> AvsdConfig:
        """The config `to_dict` wrote (already checked by `avsd_config` where it was parsed)."""
        if not isinstance(data, Mapping):
            raise AvsdConfigError(f"{KEY}: expected the mapping AvsdConfig.to_dict() writes, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        missing, unknown = [n for n in names if n not in data], [k for k in data if k not in names]
        if missing or unknown:
            raise AvsdConfigError(
                f"{KEY}: not an AvsdConfig.to_dict() mapping (missing {missing}, unknown {unknown}); "
                "every option is a field of AvsdConfig in verl_avsd/config.py and a key of config/avsd.yaml"
            )
        return cls(**{f.name: _typed(f.type, data[f.name]) for f in dataclasses.fields(cls)})


def _typed(annotation: str, value):
    """A checked value as its field's type: lists as tuples, mappings read-only, counts as int."""
    if value is None:
        return None
    base = annotation.removesuffix(" | None")
    if base.startswith("tuple["):
        return tuple(value)
    if base.startswith("Mapping["):
        return FrozenMap(value)
    if base in ("int", "float"):
        return {"int": int, "float": float}[base](value)
    return value


def _defaults_node() -> DictConfig:
    return OmegaConf.load(DEFAULTS_PATH)


@functools.cache
def default_config() -> AvsdConfig:
    """The defaults of config/avsd.yaml, checked like a run's options (frozen, so shared)."""
    return _as_dataclass(_checked(_defaults_node()))


def _as_dataclass(cfg: DictConfig) -> AvsdConfig:
    data = OmegaConf.to_container(cfg, resolve=True)
    fields = {f.name for f in dataclasses.fields(AvsdConfig)}
    if set(data) != fields:  # a key added to the yaml without its field, or the reverse
        raise AvsdConfigError(
            f"{DEFAULTS_PATH} and AvsdConfig (verl_avsd/config.py) disagree: keys without a field "
            f"{sorted(set(data) - fields)}, fields without a key {sorted(fields - set(data))}"
        )
    return AvsdConfig.from_dict(data)


def scored_views(avsd: AvsdConfig, estimator: str) -> AvsdConfig:
    """The config the teacher step runs with: OPSD reads one view, so its teacher scores only
    `opsd_view`, not every view in `views` (M-1 views of teacher time for nothing). The trainer
    (actor placement) and the rollout-side teacher both use this."""
    return dataclasses.replace(avsd, views=(avsd.opsd_view,)) if estimator == "opsd" else avsd


def avsd_config(algorithm_config) -> AvsdConfig:
    """The resolved AVSD options of a run, from verl's `algorithm` config (DictConfig, dict or a
    dataclass-like object with an `avsd` attribute/key; missing means all defaults). An `avsd`
    that is already an AvsdConfig (or an AvsdConfig given itself) was parsed before and comes
    back as it is."""
    if isinstance(algorithm_config, AvsdConfig):
        return algorithm_config
    user = _get(algorithm_config, "avsd")
    if isinstance(user, AvsdConfig):
        return user
    if user is None:
        return default_config()
    return _as_dataclass(_parsed_node(user))


def _parsed_node(user) -> DictConfig:
    """The run's `algorithm.avsd` mapping merged onto the yaml's defaults, every key checked."""
    cfg = _defaults_node()
    if not isinstance(user, (Mapping, DictConfig)):
        raise AvsdConfigError(f"{KEY} must be a mapping of AVSD options, got {type(user).__name__} {user!r:.80}")
    try:
        user = OmegaConf.to_container(user, resolve=True) if isinstance(user, DictConfig) else dict(user)
    except OmegaConfBaseException as e:
        raise AvsdConfigError(f"{KEY}: {e}") from None
    known = set(cfg.keys())
    for key in user:
        if key not in known:
            hint = difflib.get_close_matches(str(key), sorted(known), n=1)
            raise AvsdConfigError(
                f"{KEY}.{key} is not an AVSD option"
                + (f"; did you mean {KEY}.{hint[0]}?" if hint else "")
                + f" Known options: {', '.join(sorted(known))} (defaults in {DEFAULTS_PATH})."
            )
    # Shapes a merge would choke on (or silently accept: a string onto a list) are checked first.
    if "views" in user and not isinstance(user["views"], (list, tuple, ListConfig)):
        raise AvsdConfigError(f"{KEY}.views must be a list of view names like [full,partial,answer], got {user['views']!r:.80}")
    if "epistemic_markers" in user and not isinstance(user["epistemic_markers"], (list, tuple, ListConfig)):
        raise AvsdConfigError(
            f"{KEY}.epistemic_markers must be a list of words or phrases like [wait, hmm, let me check], "
            f"got {user['epistemic_markers']!r:.80}"
        )
    if "view_titles" in user and not isinstance(user["view_titles"], (Mapping, DictConfig)):
        raise AvsdConfigError(
            f"{KEY}.view_titles must be a mapping of view name to title like {{full: 'A worked solution'}}, "
            f"got {user['view_titles']!r:.80}"
        )
    chat_kwargs = user.get("teacher_chat_template_kwargs")
    if chat_kwargs is not None and not isinstance(chat_kwargs, (Mapping, DictConfig)):
        raise AvsdConfigError(
            f"{KEY}.teacher_chat_template_kwargs must be a mapping of chat-template arguments like "
            f"{{enable_thinking: true}} or null (= the student's), got {chat_kwargs!r:.80}"
        )
    OmegaConf.set_struct(cfg, True)
    OmegaConf.set_struct(cfg.view_titles, False)  # users may title views of their own
    for key, value in user.items():  # one key at a time, so an error can name it
        try:
            cfg = OmegaConf.merge(cfg, {key: value})
        except OmegaConfBaseException as e:
            raise AvsdConfigError(f"{KEY}.{key}={value!r:.80} cannot be used: {e}") from None
    return _checked(cfg)


def _checked(cfg: DictConfig) -> DictConfig:
    _validate(cfg)
    return cfg


def _get(obj, key):
    if obj is None:
        return None
    if isinstance(obj, (dict, DictConfig)):
        return obj.get(key)
    return getattr(obj, key, None)


# ---- value checks: each names its key and says what a good value looks like ----


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _real(cfg, key: str, lo: float | None = None, hi: float | None = None, hi_open: bool = False) -> float:
    """A finite number (not a bool, not a string), within [lo, hi] (or [lo, hi))."""
    value = cfg[key]
    if not _is_number(value) or not math.isfinite(value):
        raise AvsdConfigError(f"{KEY}.{key} must be a finite number, got {value!r:.80}")
    if (lo is not None and value < lo) or (hi is not None and (value >= hi if hi_open else value > hi)):
        bounds = f"[{lo}, {hi}{')' if hi_open else ']'}" if hi is not None else f">= {lo}"
        raise AvsdConfigError(f"{KEY}.{key} must be {'in ' if hi is not None else ''}{bounds}, got {value}")
    return float(value)


def _count(cfg, key: str, lo: int, *, allow_none: bool = False, what: str = "") -> None:
    """An integer >= lo (an integral float like 1.6e4, from a command line, is stored as int)."""
    value = cfg[key]
    if value is None and allow_none:
        return
    ok = _is_number(value) and math.isfinite(value) and float(value).is_integer() and lo <= value <= MAX_TOKENS
    if not ok:
        kind = "a positive integer" if lo == 1 else f"an integer >= {lo}"
        raise AvsdConfigError(f"{KEY}.{key} must be {kind}{' or null' if allow_none else ''}{what}, got {value!r:.80}")
    cfg[key] = int(value)


def _text(cfg, key: str, *, allow_none: bool = False, what: str = "") -> None:
    """A non-blank string (or null when allowed)."""
    value = cfg[key]
    if value is None and allow_none:
        return
    if not isinstance(value, str) or not value.strip():
        raise AvsdConfigError(
            f"{KEY}.{key} must be a non-empty string{' or null' if allow_none else ''}{what}, got {value!r:.80}"
        )


def _check_views(cfg) -> list[str]:
    views = list(cfg.views)
    if not views:
        raise AvsdConfigError(f"{KEY}.views must be a non-empty list of distinct view names, got []")
    for name in views:
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise AvsdConfigError(
                f"{KEY}.views must be a list of view names (non-empty strings without surrounding spaces), "
                f"got {name!r} in {views}"
            )
    if len(set(views)) != len(views):
        raise AvsdConfigError(f"{KEY}.views must be a non-empty list of distinct view names, got {views}")
    return views


def _check_template(cfg) -> None:
    template = cfg.view_template
    if not isinstance(template, str):
        raise AvsdConfigError(f"{KEY}.view_template must be a string with {{prompt}} and {{view}}, got {template!r:.80}")
    from verl_avsd.view_presets import is_preset_name, view_template_preset  # plain data, no heavy imports

    if is_preset_name(template):  # a bare name: a preset (a format string always has braces)
        try:
            view_template_preset(template)
        except ValueError as e:
            raise AvsdConfigError(str(e)) from None
        return
    # A template written on a command line cannot hold a newline; a literal backslash-n stands for one.
    template = cfg.view_template = template.replace("\\n", "\n")
    literal_hint = "write a literal brace as {{ or }}"
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as e:  # a stray { or }
        raise AvsdConfigError(f"{KEY}.view_template has a stray brace ({e}); {literal_hint}: {template!r:.120}") from None
    for field in fields:
        if field not in TEMPLATE_FIELDS:
            raise AvsdConfigError(
                f"{KEY}.view_template has the unknown placeholder {{{field}}}; it may use "
                f"{', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)} ({literal_hint})"
            )
    for placeholder in ("prompt", "view"):
        if placeholder not in fields:
            raise AvsdConfigError(f"{KEY}.view_template must contain {{{placeholder}}}, got {template!r:.120}")
    try:  # a format spec or conversion that str.format rejects ({view:d}, {prompt!z})
        template.format(**{f: "x" for f in TEMPLATE_FIELDS})
    except (ValueError, TypeError, KeyError, IndexError) as e:
        raise AvsdConfigError(f"{KEY}.view_template cannot be filled in ({e}): {template!r:.120}") from None


def _check_teacher_chat_kwargs(cfg) -> None:
    """null, or a mapping of argument names (not ones the context builder sets itself) to values."""
    kwargs = cfg.teacher_chat_template_kwargs
    if kwargs is None:
        return
    if not isinstance(kwargs, DictConfig):
        raise AvsdConfigError(
            f"{KEY}.teacher_chat_template_kwargs must be a mapping like {{enable_thinking: true}} or null, got {kwargs!r:.80}"
        )
    for name in kwargs:
        if not isinstance(name, str) or not name.isidentifier():
            raise AvsdConfigError(f"{KEY}.teacher_chat_template_kwargs: {name!r} is not an argument name")
        if name in RESERVED_CHAT_TEMPLATE_KWARGS:
            raise AvsdConfigError(
                f"{KEY}.teacher_chat_template_kwargs.{name} is set by the teacher's context builder itself "
                f"(it may not set {', '.join(RESERVED_CHAT_TEMPLATE_KWARGS)})"
            )


def _check_markers(cfg) -> None:
    """Epistemic markers: distinct strings (compared as they match: case and spacing aside), each
    with a letter or digit (a marker of punctuation only has no word to match whole)."""
    from verl_avsd.epistemic import normal_form  # plain `re`, no heavy imports

    markers = list(cfg.epistemic_markers)
    what = f"{KEY}.epistemic_markers must be a non-empty list of distinct words or phrases, each with a letter or digit"
    if not markers:
        raise AvsdConfigError(f"{what}, got []")
    seen: dict[str, str] = {}
    for marker in markers:
        if not isinstance(marker, str) or not any(c.isalnum() for c in marker):
            raise AvsdConfigError(f"{what}, got {marker!r:.80} in the list")
        if normal_form(marker) in seen:
            raise AvsdConfigError(f"{what}, got {marker!r} and {seen[normal_form(marker)]!r}, which match the same text")
        seen[normal_form(marker)] = marker


def _check_titles(cfg) -> None:
    titles = cfg.view_titles
    if not isinstance(titles, DictConfig):
        raise AvsdConfigError(f"{KEY}.view_titles must be a mapping of view name to title, got {titles!r:.80}")
    for name, title in titles.items():
        if not isinstance(title, str) or not title.strip():
            raise AvsdConfigError(f"{KEY}.view_titles.{name} must be a non-empty string (the view's title), got {title!r:.80}")


def _validate(cfg: DictConfig) -> None:
    views = _check_views(cfg)
    if not isinstance(cfg.opsd_view, str) or cfg.opsd_view not in views:
        raise AvsdConfigError(f"{KEY}.opsd_view={cfg.opsd_view!r} is not in {KEY}.views={views}")
    if cfg.teacher not in TEACHERS:
        raise AvsdConfigError(f"{KEY}.teacher must be one of {TEACHERS}, got {cfg.teacher!r}")
    if cfg.teacher_placement not in TEACHER_PLACEMENTS:
        raise AvsdConfigError(f"{KEY}.teacher_placement must be one of {TEACHER_PLACEMENTS}, got {cfg.teacher_placement!r:.80}")
    _check_template(cfg)
    _check_titles(cfg)
    _check_teacher_chat_kwargs(cfg)
    for key in ("max_view_tokens", "token_budget", "logprob_chunk_tokens", "credit_top_k"):
        _count(cfg, key, 1)
    _count(cfg, "share_prefix_min_tokens", 0, what=" (0 = off)")
    _count(cfg, "teacher_stream_tokens", 0, what=" (0 = score each sample's views once, when it ends)")
    if not isinstance(cfg.teacher_group_by_prompt, bool):
        raise AvsdConfigError(f"{KEY}.teacher_group_by_prompt must be true or false, got {cfg.teacher_group_by_prompt!r:.80}")
    _real(cfg, "epistemic_tau", lo=0.0)
    _check_markers(cfg)
    _real(cfg, "rlsd_lam", lo=0.0, hi=1.0)
    _real(cfg, "rlsd_eps_w", lo=0.0, hi=1.0, hi_open=True)
    _real(cfg, "wrong_below")
    _real(cfg, "gate_open_threshold", lo=0.0, hi=1.0)
    _text(cfg, "dump_rollouts_dir", allow_none=True, what=" (a directory; null = off)")
    if cfg.sandbox_isolation not in SANDBOX_ISOLATIONS:
        raise AvsdConfigError(f"{KEY}.sandbox_isolation must be one of {SANDBOX_ISOLATIONS}, got {cfg.sandbox_isolation!r:.80}")
    _count(cfg, "sandbox_max_concurrent", 1, allow_none=True, what=" (null = the sandbox's default)")
    url = cfg.sandbox_fusion_url
    if url is not None and (not isinstance(url, str) or not url.startswith(("http://", "https://"))):
        raise AvsdConfigError(
            f"{KEY}.sandbox_fusion_url must be an http(s) URL of a SandboxFusion /run_code endpoint or null, got {url!r:.80}"
        )
    if cfg.sandbox_isolation == "sandbox_fusion" and url is None:
        raise AvsdConfigError(
            f"{KEY}.sandbox_isolation=sandbox_fusion needs {KEY}.sandbox_fusion_url (the server's /run_code URL)"
        )
