"""Claims in blocks on a real SQLite store: what one read of a block's cells gives (plain SQL, held equal to
MLflow's own search, the only route over HTTP), what a block of claims costs a sweep alone, and how a result
is recorded on a later read of the cells a sweep holds (Store.claim_cells, Store.holding, Recorder.holds).
"""

from __future__ import annotations

import time

import pytest

from tinytrain.spec import load_experiment

GRID = """name = "blocks"
steps = 3
[grid]
optimizer = ["sgd", "adam"]
lr = [0.01, 0.001]
seed = [0, 1, 2]
"""
OTHER_OWNER = {"tinytrain.owner": "another-machine:4242:1"}  # another sweep's process (another host: alive)


@pytest.fixture
def specs():
    return load_experiment("blocks", text=GRID).specs()


class Calls:
    """Counts the MLflow client calls a store makes (each still goes to the real store)."""

    def __init__(self, monkeypatch, client, names):
        self.counts = dict.fromkeys(names, 0)
        for name in names:
            real = getattr(client, name)

            def counted(*args, _name=name, _real=real, **kwargs):
                self.counts[_name] += 1
                return _real(*args, **kwargs)

            monkeypatch.setattr(client, name, counted)


def finish(client, run_id: str) -> None:
    client.set_tag(run_id, "tinytrain.outcome", "finished")
    client.set_terminated(run_id, "FINISHED")


def test_one_read_of_a_block_equals_mlflows_search_of_it(store_uri, specs):
    """The plain-SQL read of a block's cells (SQLite) gives what MLflow's search gives (a server's route):
    RUNNING claims with their leases and owners, FINISHED runs of other processes; not this process's own
    finished runs, failed or deleted runs, summary runs, or another experiment's; and again after more runs
    end (the search then reads only what ended since its last read)."""
    from tinytrain.tracking import Store

    with Store(store_uri, writer=True) as store:
        experiment_id = store.experiment_id("blocks")
        other_id = store.experiment_id("elsewhere")
        client = store.client
        mine = store.claim_cell(experiment_id, None, specs[0], {}, 60.0)
        theirs = store.claim_cell(experiment_id, None, specs[1], OTHER_OWNER, 60.0)
        done_by_them = store.start_run(experiment_id, None, specs[2], OTHER_OWNER)
        finish(client, done_by_them)
        done_by_me = store.start_run(experiment_id, None, specs[3], {})
        finish(client, done_by_me)
        failed = store.start_run(experiment_id, None, specs[4], OTHER_OWNER)
        client.set_terminated(failed, "FAILED")
        deleted = store.start_run(experiment_id, None, specs[4], OTHER_OWNER)
        finish(client, deleted)
        client.delete_run(deleted)
        summary = client.create_run(experiment_id, tags={"tinytrain.kind": "cell", "tinytrain.run_key": specs[5].key})
        client.set_terminated(summary.info.run_id, "FINISHED")
        elsewhere = store.start_run(other_id, None, specs[5], OTHER_OWNER)
        finish(client, elsewhere)
        keys = [spec.key for spec in specs]

        def both() -> dict:
            by_sql = store.cell_states(experiment_id, keys)
            by_search: dict = {}
            for key, state in store._cell_states_searched(experiment_id, set(keys)):
                by_search.setdefault(key, []).append(state)
            assert {key: sorted(states, key=repr) for key, states in by_sql.items()} == {
                key: sorted(states, key=repr) for key, states in by_search.items()
            }
            return by_sql

        first = both()
        assert {key: [state.run_id for state in states] for key, states in first.items()} == {
            specs[0].key: [mine.run_id],
            specs[1].key: [theirs.run_id],
            specs[2].key: [done_by_them],
        }
        (claim,) = first[specs[0].key]
        assert claim.status == "RUNNING" and claim.lease_until > time.time() + 50 and not claim.owner_gone
        assert first[specs[2].key][0].done
        finish(client, theirs.run_id)  # their claim trained: it ends, and the next read sees it FINISHED
        late = store.start_run(experiment_id, None, specs[6], OTHER_OWNER)
        finish(client, late)
        second = both()
        assert [state.status for state in second[specs[1].key]] == ["FINISHED"]
        assert second[specs[6].key][0].run_id == late
        client.set_terminated(mine.run_id, "FINISHED")


def test_a_block_of_claims_alone_costs_one_create_a_cell_one_wait_and_no_search(store_uri, specs, monkeypatch):
    from tinytrain.tracking import Store
    from tinytrain.tracking import store as store_module

    sleeps: list[float] = []
    real_sleep = time.sleep
    monkeypatch.setattr(store_module.time, "sleep", lambda seconds: (sleeps.append(seconds), real_sleep(seconds)))
    with Store(store_uri, writer=True) as store:
        experiment_id = store.experiment_id("blocks")
        calls = Calls(monkeypatch, store.client, ["create_run", "search_runs", "set_tag", "set_terminated"])
        claims, holding = store.claim_cells(experiment_id, None, specs, {}, 60.0)
        assert [claim.state for claim in claims] == ["won"] * len(specs) and holding == {}
        assert calls.counts == {"create_run": len(specs), "search_runs": 0, "set_tag": 0, "set_terminated": 0}
        assert len(sleeps) == 1
        assert all(claim.lease_until > time.time() + 50 for claim in claims)
        # the same cells again (another sweep would): all held by those claims, nothing created
        again, _ = store.claim_cells(experiment_id, None, specs, {}, 60.0)
        assert [(c.state, c.run_id) for c in again] == [("taken", claim.run_id) for claim in claims]
        assert calls.counts["create_run"] == len(specs) and len(sleeps) == 1
        for claim in claims:
            store.client.set_terminated(claim.run_id, "FINISHED")


def test_holding_says_whether_a_sweeps_claims_still_hold_their_cells(store_uri, specs):
    from tinytrain.tracking import Store

    with Store(store_uri, writer=True) as store:
        experiment_id = store.experiment_id("blocks")
        claims, _ = store.claim_cells(experiment_id, None, specs[:3], {}, 60.0)
        held = {spec.key: claim.run_id for spec, claim in zip(specs[:3], claims, strict=True)}
        assert {claim.state for claim in store.holding(experiment_id, held).values()} == {"won"}
        # another sweep took the first over (marked it FAILED) and finished the second elsewhere
        store.client.set_terminated(claims[0].run_id, "FAILED")
        finish(store.client, store.start_run(experiment_id, None, specs[1], OTHER_OWNER))
        verdicts = store.holding(experiment_id, held)
        assert [verdicts[spec.key].state for spec in specs[:3]] == ["taken", "done", "won"]
        # a later block's first read says the same of the cells this sweep holds
        _, folded = store.claim_cells(experiment_id, None, specs[3:4], {}, 60.0, held)
        assert {key: claim.state for key, claim in folded.items()} == {key: v.state for key, v in verdicts.items()}
        for run in store.search(experiment_id, "attributes.status = 'RUNNING'"):
            store.client.set_terminated(run.info.run_id, "KILLED")


def test_a_result_is_recorded_on_a_later_blocks_read_while_its_lease_has_time_left(store_uri, specs, monkeypatch):
    """The Recorder reads nothing more for a claimed cell's result when a later block's claims read its cell
    lately (and its lease has more than a third to run); otherwise it reads every cell it holds, once for
    them all."""
    from tinytrain.tracking import Recorder
    from tinytrain.tracking import recorder as recorder_module

    monkeypatch.setattr(recorder_module, "HOLDING_FRESH_SECONDS", 3600.0)  # this test's time is not the point

    experiment = load_experiment("blocks", text=GRID)
    recorder = Recorder(store_uri)
    recorder.open(experiment, specs, {}, with_parent=False)
    try:
        reads: list[int] = []
        real = recorder.store.holding
        monkeypatch.setattr(recorder.store, "holding", lambda eid, held: (reads.append(len(held)), real(eid, held))[1])
        first = recorder.claim_many(specs[:3])
        recorder.claim_many(specs[3:5])  # reads the first block's cells again
        assert [claim.state for claim in first] == ["won"] * 3
        assert recorder.holds(specs[0].key, first[0].run_id).state == "won"
        assert reads == []
        recorder.lease_until[specs[1].key] = time.time() + recorder.lease / 4  # its renewal fell behind
        assert recorder.holds(specs[1].key, first[1].run_id).state == "won"
        assert reads == [5]  # every cell it holds, in one read
        for spec in specs[2:4]:  # their verdicts came with that read (the last block's cells had none before)
            assert recorder.holds(spec.key, recorder.run_ids[spec.key]).state == "won"
        assert reads == [5]
        monkeypatch.setattr(recorder_module, "HOLDING_FRESH_SECONDS", 0.0)  # a cell that trained long: read again
        assert recorder.holds(specs[4].key, recorder.run_ids[specs[4].key]).state == "won"
        assert reads == [5, 5]
    finally:
        recorder.close("KILLED")
