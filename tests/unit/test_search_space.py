"""The search space of `tinytrain search` over a grid's own cells: its axes, its corners, its cells, and the
untried cell nearest to one asked again (no store, no optuna)."""

from __future__ import annotations

import pytest

from tinytrain.search import all_cells, corners, nearest_untried, parse_space
from tinytrain.spec import ConfigError, validate


def grid(**axes):
    return validate({"steps": 5, "grid": {"seed": [0, 1], **axes}})


def test_without_space_the_grid_axes_are_searched_over_their_own_values():
    experiment = grid(optimizer=["sgd", "adam"], lr=[0.1, 0.001, 0.01])
    optimizer, lr = parse_space([], experiment)
    assert (optimizer.name, optimizer.values, optimizer.ordered) == ("optimizer", ("sgd", "adam"), False)
    assert (lr.param, lr.values, lr.ordered) == ("lr index", (0.001, 0.01, 0.1), True)  # sorted: an order
    assert len(all_cells([optimizer, lr])) == 6
    assert corners([optimizer, lr]) == [
        {"optimizer": "sgd", "lr index": 0},
        {"optimizer": "sgd", "lr index": 2},
        {"optimizer": "adam", "lr index": 0},
        {"optimizer": "adam", "lr index": 2},
    ]
    (range_,) = [d for d in parse_space(["lr=1e-3:1:log"], experiment) if d.name == "lr"]
    assert not range_.values and corners(parse_space(["lr=1e-3:1:log"], experiment)) == []


def test_a_cell_asked_again_is_followed_by_the_nearest_untried_one():
    space = parse_space([], grid(optimizer=["sgd", "adam"], lr=[0.001, 0.01, 0.1, 1.0]))
    tried = {tuple(sorted(cell.items())) for cell in all_cells(space) if cell["lr index"] in (2, 3)}
    assert nearest_untried(space, {"optimizer": "adam", "lr index": 3}, tried) == {"optimizer": "adam", "lr index": 1}
    tried |= {(("lr index", 1), ("optimizer", "adam")), (("lr index", 0), ("optimizer", "adam"))}
    assert nearest_untried(space, {"optimizer": "adam", "lr index": 3}, tried) == {"optimizer": "sgd", "lr index": 1}
    everything = {tuple(sorted(cell.items())) for cell in all_cells(space)}
    assert nearest_untried(space, {"optimizer": "adam", "lr index": 3}, everything) is None


def test_an_lr_per_optimizer_is_searched_in_that_optimizers_values():
    experiment = grid(optimizer=["sgd", "adam"], lr={"sgd": [0.01, 0.1, 1.0], "adam": [1e-4, 1e-3]})
    space = parse_space([], experiment)
    assert [d.name for d in space] == ["optimizer", "lr (sgd)", "lr (adam)"]
    assert len(all_cells(space)) == 5
    assert {"optimizer": "adam", "lr (adam) index": 1} in corners(space)


def test_a_grid_of_one_cell_and_no_space_is_an_empty_space():
    with pytest.raises(ConfigError, match="the search space is empty"):
        parse_space([], grid(optimizer=["adam"], lr=[0.01]))
