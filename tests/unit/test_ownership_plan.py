"""The ownership round's decisions: renew, step down in time, give back the surplus, take free channels."""

from broadcaster.core.ownership import fair_share, plan_round

LEASE = 3000


def plan(held=None, channels=("a", "b", "c", "d"), elsewhere=(), processes=1, idle=(), now=10_000):
    return plan_round(LEASE, now, dict(held or {}), list(channels), set(elsewhere), processes, set(idle))


def test_a_lone_process_takes_every_free_channel():
    """Fair share with one process is everything."""
    assert plan().acquire == ["a", "b", "c", "d"]


def test_channels_spread_over_the_processes():
    """Two processes, four channels: each takes two, and none held elsewhere."""
    assert plan(processes=2).acquire == ["a", "b"]
    assert plan(processes=2, elsewhere={"a", "b"}).acquire == ["c", "d"]
    assert fair_share(5, 2) == 3 and fair_share(0, 3) == 0 and fair_share(3, 0) == 3


def test_a_lease_not_renewed_for_two_thirds_of_its_time_is_given_up():
    """Renewed 2000 ms ago on a 3000 ms lease: step down, and it is not taken back in the same round."""
    result = plan(held={"a": 8000, "b": 9000})
    assert result.step_down == ["a"] and result.renew == ["b"]
    assert "a" not in result.acquire


def test_only_idle_channels_are_given_back_to_make_room():
    """Holding four of four with a second process: two idle ones go back; a channel on the air stays."""
    held = {name: 9500 for name in "abcd"}
    assert plan(held=held, processes=2, idle={"a", "b", "c", "d"}).release == ["d", "c"]
    result = plan(held=held, processes=2, idle={"a"})
    assert result.release == ["a"] and sorted(result.renew) == ["b", "c", "d"] and result.acquire == []
