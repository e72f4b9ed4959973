"""Association slots: the global cap and the caps per calling AE and per user, as the DIMSE
front end (one process) or the workers' supervisor (several) counts them."""

from __future__ import annotations

import asyncio
import threading

from pacsguard.archive.dimse.slots import AssociationSlots


def test_the_global_cap_holds_and_a_slot_given_back_is_taken_again() -> None:
    slots = AssociationSlots(2, per_ae=2, per_user=2)
    assert slots.take_now() and slots.take_now()
    assert not slots.take_now()
    slots.give_now()
    assert slots.take_now()


def test_per_ae_and_per_user_caps_are_separate() -> None:
    slots = AssociationSlots(10, per_ae=2, per_user=3)
    assert slots.take_peer_now("CT1", "alice") is None
    assert slots.take_peer_now("CT1", "alice") is None
    assert slots.take_peer_now("CT1", "alice") == "per-AE association limit (2) reached"
    assert slots.take_peer_now("CT2", "alice") is None  # another AE, the same user: third
    assert slots.take_peer_now("CT3", "alice") == "per-user association limit (3) reached"
    assert slots.take_peer_now("CT3", None) is None  # no user: only the AE counts
    slots.give_peer_now("CT1", "alice")
    assert slots.take_peer_now("CT3", "alice") is None


def test_concurrent_takers_never_overshoot_the_cap() -> None:
    slots = AssociationSlots(50, per_ae=50, per_user=50)
    taken: list[bool] = []
    lock = threading.Lock()

    def take_many() -> None:
        for _ in range(100):
            got = slots.take_now()
            with lock:
                taken.append(got)

    threads = [threading.Thread(target=take_many) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(taken) == 50


def test_the_async_face_counts_the_same_slots() -> None:
    slots = AssociationSlots(1, per_ae=1, per_user=1)

    async def run() -> tuple[bool, bool, str | None]:
        first = await slots.take()
        second = await slots.take()
        peer = await slots.take_peer("CT1", None)
        await slots.give_peer("CT1", None)
        await slots.give()
        return first, second, peer

    assert asyncio.run(run()) == (True, False, None)
    assert slots.take_now()
