"""Who holds a cell, decided from its runs as a sweep reads them back (store.decide_claim, a pure function)."""

from __future__ import annotations

from tinytrain.tracking.store import DONE, TAKEN, WON, CellRunState, decide_claim

NOW = 1_000.0


def run(run_id, status="RUNNING", start=1, lease=NOW + 60, outcome=None, gone=False) -> CellRunState:
    return CellRunState(run_id, status, outcome, start, lease, gone)


def test_the_earliest_live_claim_wins_whoever_reads():
    runs = [run("b", start=2), run("a", start=1), run("c", start=3)]
    assert decide_claim(runs, "a", NOW).state == WON
    lost = decide_claim(runs, "b", NOW)
    assert lost.state == TAKEN and lost.run_id == "a"


def test_equal_start_times_are_ordered_by_run_id():
    runs = [run("b", start=1), run("a", start=1)]
    assert decide_claim(runs, "a", NOW).state == WON
    assert decide_claim(runs, "b", NOW).state == TAKEN


def test_a_finished_run_of_the_cell_ends_it_whatever_the_claims():
    runs = [run("a", start=1), run("f", status="FINISHED", outcome="diverged", start=0)]
    decided = decide_claim(runs, "a", NOW)
    assert decided.state == DONE and decided.run_id == "f"


def test_a_failed_run_is_no_claim_and_no_finished_cell():
    runs = [run("x", status="FINISHED", outcome="failed"), run("y", status="FAILED")]
    assert decide_claim(runs, None, NOW) is None


def test_lapsed_leases_gone_owners_and_runs_without_a_lease_hold_nothing():
    runs = [run("old", start=0, lease=NOW - 1), run("dead", start=0, gone=True), run("legacy", start=0, lease=None)]
    assert decide_claim(runs, None, NOW) is None
    assert decide_claim([*runs, run("mine", start=5)], "mine", NOW).state == WON
    assert all(r.lapsed_claim(NOW) for r in runs[:2]) and not runs[2].lapsed_claim(NOW)


def test_a_live_claim_of_another_is_taken_until_its_lease():
    decided = decide_claim([run("a", lease=NOW + 30), run("b", start=2, lease=NOW + 50)], None, NOW)
    assert decided.state == TAKEN and decided.lease_until == NOW + 50


def test_a_block_holds_a_few_seconds_of_training_and_at_most_half_of_what_is_left():
    from tinytrain.sweep import CLAIM_AHEAD_SECONDS, BlockSize

    size = BlockSize(wave=2)
    assert size.next(1000) == 2  # nothing trained yet: one cell per worker
    size.trained(2, 0.2)  # 0.1 s a cell: at most twice the last block
    assert size.next(1000) == 4
    for _ in range(4):
        size.trained(size.next(1000), 0.1 * size.next(1000))
    assert size.next(1000) == int(CLAIM_AHEAD_SECONDS / 0.1)  # grown to a second of training
    assert size.next(20) == 10 and size.next(3) == 2
    size.trained(1, 60.0)  # long cells: still one per worker
    assert size.next(1000) == 2


def test_a_block_that_diverged_at_once_does_not_make_the_next_one_take_the_rest_of_the_grid():
    """Cells of about 1 s, then a block that diverged in milliseconds: the next block still holds about a
    second of training (the mean so far), not half of the grid, so another sweep is not left waiting."""
    from tinytrain.sweep import BlockSize

    size = BlockSize(wave=1)
    for _ in range(14):
        size.trained(1, 1.1)
    size.trained(3, 0.02)  # three cells that diverged at their first steps
    assert size.next(26) <= 2

    fixed = BlockSize(wave=32, grows=False)  # the vmap engine's batch
    fixed.trained(32, 0.32)
    assert fixed.next(1000) == 32
