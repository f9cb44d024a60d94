"""The search space in Hydra's override syntax as Optuna distributions, and back as overrides."""

from __future__ import annotations

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from audioml.search.space import SearchSpaceError, grid_values, parse_space


def test_each_sweep_becomes_its_distribution_and_plain_values_stay_fixed():
    space = parse_space(["model.optimizer.lr=tag(log, interval(1e-4, 1e-2))", "model.backbone.dropout=interval(0.0, 0.5)",
                         "loss=choice(ce, weighted_ce)", "data.batch_size=range(8, 33, 8)", "model.backbone.dense=32,64",
                         "trainer.max_epochs=3", "+extra=interval(1, 4)"])
    d = space.distributions
    assert d["model.optimizer.lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert d["model.backbone.dropout"] == FloatDistribution(0.0, 0.5)
    assert d["loss"] == CategoricalDistribution(["ce", "weighted_ce"])
    assert d["data.batch_size"] == IntDistribution(8, 32, step=8)  # range() leaves stop out, as Python's
    assert d["model.backbone.dense"] == CategoricalDistribution([32, 64])
    assert d["+extra"] == FloatDistribution(1.0, 4.0)  # Hydra's intervals are floats
    assert space.fixed == ("trainer.max_epochs=3",)
    overrides = space.overrides({"model.optimizer.lr": 0.001, "model.backbone.dropout": 0.25, "loss": "ce",
                                 "data.batch_size": 16, "model.backbone.dense": 64, "+extra": 2.5})
    assert overrides == ["model.optimizer.lr=0.001", "model.backbone.dropout=0.25", "loss=ce", "data.batch_size=16",
                         "model.backbone.dense=64", "+extra=2.5", "trainer.max_epochs=3"]


def test_a_later_override_of_a_key_wins_and_lists_are_choices():
    space = parse_space(["loss=choice(ce, weighted_ce)", "model.backbone.channels=choice([8,16],[16,32])", "loss=ce"])
    assert space.fixed == ("loss=ce",) and list(space.distributions) == ["model.backbone.channels"]
    assert space.distributions["model.backbone.channels"].choices == ("[8,16]", "[16,32]")


def test_grid_values_enumerate_choices_and_ranges_but_refuse_intervals():
    space = parse_space(["a=range(1, 4)", "b=choice(x, y)", "c=range(0.1, 0.35, 0.1)"])
    assert grid_values(space) == {"a": [1, 2, 3], "b": ["x", "y"], "c": [0.1, 0.2, 0.3]}
    with pytest.raises(SearchSpaceError, match="grid sampler"):
        grid_values(parse_space(["lr=interval(0.1, 0.2)"]))


@pytest.mark.parametrize("argument, message", [("lr=tag(log, interval(0.0, 1.0))", "above 0"),
                                               ("x=range(5, 5)", "empty")])
def test_unusable_sweeps_say_what_to_write(argument, message):
    with pytest.raises(SearchSpaceError, match=message):
        parse_space([argument])
