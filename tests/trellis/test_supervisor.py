"""The lab supervisor's restart policy (pure): immediate first restart, then doubling
backoff to a cap, and a fresh start for a process that stayed up."""
from trellis.lab.supervisor import BACKOFF_MAX, STABLE_AFTER, Backoff


def test_crash_loop_backs_off_doubling_to_the_cap():
    b, t, delays = Backoff(), 0.0, []
    for _ in range(9):
        started = t
        t += 0.5                      # crashes half a second after each start
        delays.append(b.on_exit(started, t))
        t += delays[-1]
    assert delays == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, BACKOFF_MAX, BACKOFF_MAX, BACKOFF_MAX]


def test_a_process_that_stayed_up_restarts_at_once_again():
    b = Backoff()
    assert [b.on_exit(0, 1), b.on_exit(1, 2), b.on_exit(2, 3)] == [0.0, 1.0, 2.0]
    assert b.on_exit(3, 3 + STABLE_AFTER) == 0.0
    assert b.on_exit(100, 100.5) == 1.0
