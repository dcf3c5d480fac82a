"""Long calls into XLA run in a worker thread on the command line, so that Ctrl-C and SIGTERM
reach their handler at once (jaxdd._src.interrupt)."""
from __future__ import annotations

import contextvars
import signal
import threading
import time

import jax.numpy as jnp
import pytest

from jaxdd._src import interrupt


@pytest.fixture
def enabled():
  with interrupt.enabled():
    yield


def _blocking(seconds: float, finished: list | None = None) -> float:
  """Holds its thread without returning to the interpreter's signal check: a stand-in for a
  compilation (a lock wait in C)."""
  lock = threading.Lock()
  lock.acquire()
  lock.acquire(timeout=seconds)
  if finished is not None:
    finished.append(True)
  return seconds


def test_disabled_or_off_the_main_thread_it_is_a_plain_call():
  assert interrupt.call(lambda a, b=0: a + b, 2, b=3) == 5
  assert interrupt.call(threading.current_thread) is threading.current_thread()
  with interrupt.enabled():
    with interrupt.enabled(False):
      assert interrupt.call(threading.current_thread) is threading.current_thread()


def test_the_result_the_exception_and_the_context_come_through(enabled):
  var = contextvars.ContextVar("v", default="unset")
  var.set("caller's")
  assert interrupt.call(var.get) == "caller's"
  assert interrupt.call(threading.current_thread) is not threading.main_thread()
  with pytest.raises(ZeroDivisionError):
    interrupt.call(lambda: 1 / 0)
  out = interrupt.call(lambda: jnp.arange(3) * 2, ready=True)
  assert out.tolist() == [0, 2, 4]


def test_a_signal_is_handled_while_the_worker_is_still_busy(enabled):
  def handler(signum, frame):
    raise KeyboardInterrupt

  previous = signal.signal(signal.SIGALRM, handler)
  try:
    signal.setitimer(signal.ITIMER_REAL, 0.2)
    t0 = time.monotonic()
    finished = []
    with pytest.raises(KeyboardInterrupt):
      interrupt.call(_blocking, 3.0, finished)
    assert time.monotonic() - t0 < 1.5  # not the 3 s the call takes
    assert not finished  # the worker is left behind: the command line exits at once
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


def test_give_up_abandons_the_call_between_slices(enabled):
  flag = []
  threading.Timer(0.2, lambda: flag.append(1)).start()

  def give_up():
    if flag:
      raise KeyboardInterrupt

  t0 = time.monotonic()
  with pytest.raises(KeyboardInterrupt):
    interrupt.call(_blocking, 3.0, give_up=give_up)
  assert time.monotonic() - t0 < 1.5
