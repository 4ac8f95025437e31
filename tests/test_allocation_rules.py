"""Trainer choice: eligible (active, teaches, has room), least loaded. Whether the slot
is free in the trainer's week is calendar.span_fits over calendar.tier_span
(test_calendar, test_time_rules)."""

from domain.allocation import TrainerLoad, choose_trainer, rank_trainers


def load(trainer_id: int, **overrides) -> TrainerLoad:
    values = {
        "trainer_id": trainer_id,
        "is_active": True,
        "teaches_course": True,
        "active_students": 0,
        "max_students": 3,
    } | overrides
    return TrainerLoad(**values)


def test_least_loaded_trainer_is_chosen():
    assert choose_trainer([load(1, active_students=2), load(2, active_students=1)]).trainer_id == 2


def test_ties_go_to_the_lowest_id():
    assert choose_trainer([load(5), load(3), load(4)]).trainer_id == 3


def test_ineligible_trainers_are_never_chosen():
    candidates = [
        load(1, is_active=False),
        load(2, teaches_course=False),
        load(3, active_students=3, max_students=3),
    ]
    assert choose_trainer(candidates) is None
    assert rank_trainers([*candidates, load(9, active_students=2)])[0].trainer_id == 9


def test_ranking_orders_all_eligible_trainers():
    ranked = rank_trainers([load(1, active_students=2), load(2), load(3, active_students=1)])
    assert [c.trainer_id for c in ranked] == [2, 3, 1]
