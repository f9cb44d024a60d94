"""The search space in Hydra's override syntax, as Optuna distributions, and a trial's values
back as overrides.

``hydra.sweeper.params`` and the command line keep the syntax hydra-optuna-sweeper had:
``choice(a, b)`` (or ``a,b``) -> categorical, ``range(start, stop[, step])`` -> integers (or
floats) on that grid, ``stop`` excluded as in Python, ``interval(low, high)`` -> a float,
``tag(log, interval(...))`` -> the same on a log scale; a plain value is fixed in every trial.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

__all__ = ["SearchSpace", "parse_space", "grid_values", "SearchSpaceError", "GRID_SAMPLER", "default_study_name"]


class SearchSpaceError(ValueError):
    """A search-space override Optuna cannot sample (the message says which and what to write)."""


@dataclass(frozen=True)
class SearchSpace:
    """``distributions``: what each trial samples, by override key; ``fixed``: ``key=value``
    overrides every trial gets, in the order given."""

    distributions: Mapping[str, BaseDistribution]
    fixed: tuple[str, ...]

    def overrides(self, params: Mapping[str, Any]) -> list[str]:
        """The overrides of a trial whose sampled values are ``params`` (keys as in ``distributions``)."""
        sampled = [f"{key}={_as_override_value(params[key])}" for key in self.distributions]
        return sampled + list(self.fixed)


def parse_space(arguments: Sequence[str]) -> SearchSpace:
    """``SearchSpace`` of override strings (``hydra.sweeper.params`` as ``key=value``, then the
    command line's); a later override of the same key wins. Raises ``SearchSpaceError``."""
    distributions: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(list(arguments)):
        key = override.get_key_element()
        distributions.pop(key, None)
        fixed.pop(key, None)
        if override.is_sweep_override():
            distributions[key] = _distribution(override)
        else:
            fixed[key] = f"{key}={override.get_value_element_as_str()}"
    return SearchSpace(distributions, tuple(fixed.values()))


def _distribution(override: Override) -> BaseDistribution:
    value = override.value()
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        choices = list(override.sweep_iterator(transformer=Transformer.encode))
        for choice in choices:
            if not isinstance(choice, (str, int, float, bool, type(None))):
                raise SearchSpaceError(f"{override.input_line}: a choice must be a string, number, bool or null, "
                                       f"not {type(choice).__name__}")
        return CategoricalDistribution(choices)
    if override.is_range_sweep():
        values = list(override.sweep_iterator())
        if not values:
            raise SearchSpaceError(f"{override.input_line}: the range is empty (range(start, stop, step) leaves stop out)")
        if all(isinstance(v, int) for v in values) and isinstance(value.step, int):
            return IntDistribution(values[0], values[-1], step=value.step)
        low, high = (round(float(v), 12) for v in (values[0], values[-1]))  # 0.1 + 2 * 0.1 = 0.30000000000000004
        return FloatDistribution(low, high, step=float(value.step))
    if override.is_interval_sweep():
        log = "log" in value.tags  # Hydra makes both ends floats: integers come from range()
        if log and value.start <= 0:
            raise SearchSpaceError(f"{override.input_line}: a log-scale interval needs a low end above 0")
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise SearchSpaceError(f"{override.input_line}: Optuna samples choice(...), range(...), interval(...) and "
                           "tag(log, interval(...)); glob() and other sweeps are for the basic sweeper")


def grid_values(space: SearchSpace) -> dict[str, list[Any]]:
    """Every value of each distribution, for ``GridSampler``; ``SearchSpaceError`` for a
    continuous ``interval`` (a grid needs ``choice`` or ``range``)."""
    grid = {}
    for key, distribution in space.distributions.items():
        if isinstance(distribution, CategoricalDistribution):
            grid[key] = list(distribution.choices)
        elif distribution.step is not None and not distribution.log:
            count = int(math.floor((distribution.high - distribution.low) / distribution.step + 1e-9)) + 1
            grid[key] = [distribution.low + i * distribution.step for i in range(count)]
            if isinstance(distribution, FloatDistribution):
                grid[key] = [round(v, 12) for v in grid[key]]
        else:
            raise SearchSpaceError(f"{key}: the grid sampler takes choice(...) or range(...), not a continuous "
                                   "interval; pick values with choice(), or another sampler")
    return grid


def _as_override_value(value: Any) -> str:
    """A sampled value as the right-hand side of an override (strings as Hydra encodes them)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


#: The sampler whose trials are the grid of the space (the sweeper runs at most the grid).
GRID_SAMPLER = "optuna.samplers.GridSampler"


def default_study_name(data: str | None, model: str | None, sweep_key: str) -> str:
    """``<data>-<model>-<sweep key>``: a study per command line, in characters any override and
    file name takes."""
    name = f"{data or 'data'}-{model or 'model'}-{sweep_key}"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)
