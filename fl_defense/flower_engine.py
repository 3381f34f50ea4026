"""Flower's simulation engine, shorter polling and dead client actors replaced: the one
module that relies on Flower's internals.

In a simulation (``flwr run`` on the simulation SuperLink) a message waits twice on a
poll on its way from the ServerApp to a ClientApp and back:

* the **engine's message extractor** (``add_messages_to_queue`` in
  ``flwr.server.superlink.fleet.vce.vce_api``) moves the messages the ServerApp pushed
  into the queue of the engine's workers once per tick, sleeping
  ``f_stop.wait(0.1)`` between ticks (``f_stop`` is the engine's stop event);
* the ServerApp's **grid**, an ``InMemoryGrid`` (``flwr.superlink.grid``), looks for the
  replies every ``pull_interval`` seconds (its documented constructor argument, 0.1 by
  default; the simulation builds it with the default).

A round thus costs up to 0.2 s of waiting whatever the clients do.  This module shortens
both waits to :func:`poll_interval` seconds (:data:`DEFAULT_INTERVAL` unless the
environment variable :data:`ENV` says otherwise):

* :func:`shorten_grid_polling` sets ``pull_interval`` on the grid the ServerApp is given
  (a documented attribute of a public class; grids of other classes, such as the
  deployment's ``HttpGrid``, are left as they are);
* :func:`shorten_engine_polling` replaces the extractor, in the process that runs the
  engine, by a wrapper that calls Flower's own extractor with a stand-in for ``f_stop``
  whose ``wait(timeout)`` lasts ``min(timeout, max(interval, DUTY * sweep))`` seconds,
  ``sweep`` being how long the extractor's last pass over the nodes took.  The
  extractor still does what Flower's does, only sooner; with many nodes (a pass costs
  time proportional to the nodes times the messages in flight) it passes at most once
  per ``DUTY`` times its own duration, and never less often than Flower's own tick.  The
  engine reads the extractor from its module when it starts its threads, so the
  replacement must be in place before then: :mod:`clients.client_app` calls it when it is
  imported, which Flower does before the engine starts, in the engine's process.  It acts
  only where the engine's module is already loaded and Ray not yet connected (the
  simulation process), so a deployed ClientApp imports nothing of the engine and Ray's
  workers are left alone.

Neither changes what is computed: the same messages reach the same clients, in rounds
that end when every reply is in.

A client actor that dies (killed, out of memory) fails the message it was running, as it
should; but Flower's actor pool (``BasicActorPool`` in
``flwr.simulation.ray_transport.ray_actor``) puts the dead actor back into its list of idle
actors, where it fails every later message at once, and being back first it takes most of
them: a single crash can fail every client of every later round.  Flower offers no setting
for it (the actors are created without Ray's ``max_restarts``).
:func:`replace_dead_actors` wraps the pool's ``fetch_result_and_return_actor_to_pool``: when
fetching a result raises Ray's ``ActorDiedError`` (the actor died; an exception of the
ClientApp is a ``RayTaskError`` and leaves the actor alone), the pool's record of which actor
ran that task is pointed at a new actor made with the pool's own ``create_actor_fn``, so that
the engine, which gives a failed task's actor back to the pool, gives back the new one.  The
error goes on as before: the message stays failed and the strategy counts it.  A result
fetched without error costs nothing more.  :mod:`clients.client_app` calls it beside the
polling change, under the same conditions.

The names this module relies on are checked by :func:`flower_internals_problems`
(``tests/test_flower_engine.py`` runs it); when Flower has moved one of them, the
functions here log a warning naming it and leave Flower as it is.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
import threading
import time
from typing import Any, Callable

from fl_defense.errors import ConfigError

#: The environment variable that sets the poll interval: seconds (a number > 0 and
#: <= :data:`MAX_INTERVAL`), or ``off`` to leave Flower's polling as Flower has it.
ENV = "FL_DEFENSE_FLOWER_POLL"
#: The poll interval, seconds, when :data:`ENV` is unset or empty.
DEFAULT_INTERVAL = 0.005
#: The largest interval :data:`ENV` may set (Flower's own is 0.1 s).
MAX_INTERVAL = 1.0
#: The extractor waits at least ``DUTY`` times the duration of its last pass.
DUTY = 4.0

VCE_MODULE = "flwr.server.superlink.fleet.vce.vce_api"
EXTRACTOR = "add_messages_to_queue"
ENGINE_LOOP = "run_api"
STOP_PARAMETER = "f_stop"
GRID_MODULE = "flwr.superlink.grid"
GRID_CLASS = "InMemoryGrid"
GRID_ATTRIBUTE = "pull_interval"
SIMULATION_MODULE = "flwr.simulation.run_simulation"
SIMULATION_LOOP = "_main_loop"
POOL_MODULE = "flwr.simulation.ray_transport.ray_actor"
POOL_CLASS = "BasicActorPool"
POOL_FETCH = "fetch_result_and_return_actor_to_pool"
POOL_RETURN = "add_actor_back_to_pool"
POOL_ATTRIBUTES = ("create_actor_fn", "_future_to_actor")
BACKEND_MODULE = "flwr.server.superlink.fleet.vce.backend.raybackend"
BACKEND_CLASS = "RayBackend"

_log = logging.getLogger("flwr")
_WRAPPED = "_fl_defense_original"


def poll_interval(environ: dict[str, str] | None = None) -> float | None:
    """The poll interval in seconds that :data:`ENV` asks for.

    Parameters
    ----------
    environ : dict, optional
        The environment to read (default ``os.environ``).

    Returns
    -------
    float or None
        :data:`DEFAULT_INTERVAL` when the variable is unset or empty, ``None`` when it is
        ``off`` (Flower's polling left alone), else its value.

    Raises
    ------
    ConfigError
        When the value is neither ``off`` nor a number in ``(0, MAX_INTERVAL]``; the
        message names the variable and the value.
    """
    text = (os.environ if environ is None else environ).get(ENV, "").strip()
    if not text:
        return DEFAULT_INTERVAL
    if text.lower() == "off":
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= MAX_INTERVAL:
        raise ConfigError(f"{ENV}={text!r}: want seconds in (0, {MAX_INTERVAL:g}] or 'off'")
    return value


class _ShortWait:
    """Stands in for the engine's stop event inside its extractor: ``is_set`` and ``set``
    are the event's; ``wait(timeout)`` waits on the event for at most
    ``min(timeout, max(interval, DUTY * last pass))`` seconds."""

    def __init__(self, event: threading.Event, interval: float) -> None:
        self._event = event
        self._interval = interval
        self._since = time.monotonic()

    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        self._event.set()

    def wait(self, timeout: float | None = None) -> bool:
        sweep = time.monotonic() - self._since
        pause = max(self._interval, DUTY * sweep)
        if timeout is not None:
            pause = min(pause, timeout)
        try:
            return self._event.wait(pause)
        finally:
            self._since = time.monotonic()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._event, name)


def _extractor_with_interval(original: Callable[..., Any], interval: float) -> Callable[..., Any]:
    signature = inspect.signature(original)

    def extractor(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.arguments[STOP_PARAMETER] = _ShortWait(bound.arguments[STOP_PARAMETER], interval)
        return original(*bound.args, **bound.kwargs)

    extractor.__name__ = original.__name__
    extractor.__qualname__ = original.__qualname__
    extractor.__doc__ = original.__doc__
    extractor.__signature__ = signature  # type: ignore[attr-defined]
    setattr(extractor, _WRAPPED, original)
    return extractor


def _lookup(module: str, name: str | None, problems: list[str]) -> Any:
    """``module`` (``name`` None) or its attribute ``name``; ``None``, with a sentence
    added to ``problems``, when it cannot be imported."""
    import importlib

    try:
        found = importlib.import_module(module)
        return found if name is None else getattr(found, name)
    except (ImportError, AttributeError) as exc:
        problems.append(f"{module}.{name} cannot be imported ({exc})" if name else
                        f"module {module} cannot be imported ({exc})")
        return None


def _names_used(function: Any) -> tuple[str, ...]:
    """The global and attribute names ``function``'s code reads (none for a non-function)."""
    return getattr(getattr(function, "__code__", None), "co_names", ())


def flower_internals_problems() -> list[str]:
    """What this module relies on that the installed Flower lacks.

    Returns
    -------
    list of str
        One sentence per missing or changed name, each naming the Flower module, the
        attribute and the signature or use expected; empty when everything is there.
    """
    problems: list[str] = []
    vce = _lookup(VCE_MODULE, None, problems)
    if vce is not None:
        extractor = getattr(vce, EXTRACTOR, None)
        extractor = getattr(extractor, _WRAPPED, extractor)
        if not callable(extractor):
            problems.append(f"{VCE_MODULE}.{EXTRACTOR} (the engine's message extractor) is gone")
        else:
            if STOP_PARAMETER not in inspect.signature(extractor).parameters:
                problems.append(f"{VCE_MODULE}.{EXTRACTOR}{inspect.signature(extractor)} has no parameter "
                                f"{STOP_PARAMETER!r} (the stop event it waits on between ticks)")
            if "wait" not in _names_used(extractor):
                problems.append(f"{VCE_MODULE}.{EXTRACTOR} no longer waits through {STOP_PARAMETER}.wait(...) "
                                f"between ticks")
        if EXTRACTOR not in _names_used(getattr(vce, ENGINE_LOOP, None)):
            problems.append(f"{VCE_MODULE}.{ENGINE_LOOP} no longer starts {EXTRACTOR} by its module-level name "
                            f"(replacing it would not reach the engine)")
    grid_cls = _lookup(GRID_MODULE, GRID_CLASS, problems)
    if grid_cls is not None:
        if GRID_ATTRIBUTE not in inspect.signature(grid_cls.__init__).parameters:
            problems.append(f"{GRID_MODULE}.{GRID_CLASS}.__init__{inspect.signature(grid_cls.__init__)} "
                            f"has no parameter {GRID_ATTRIBUTE!r}")
        if GRID_ATTRIBUTE not in _names_used(getattr(grid_cls, "send_and_receive", None)):
            problems.append(f"{GRID_MODULE}.{GRID_CLASS}.send_and_receive no longer reads "
                            f"self.{GRID_ATTRIBUTE}")
    main_loop = _lookup(SIMULATION_MODULE, SIMULATION_LOOP, problems)
    if main_loop is not None and GRID_CLASS not in _names_used(main_loop):
        problems.append(f"{SIMULATION_MODULE}.{SIMULATION_LOOP} no longer builds the ServerApp's grid as "
                        f"an {GRID_CLASS}")
    pool_cls = _lookup(POOL_MODULE, POOL_CLASS, problems)
    if pool_cls is not None:
        fetch = getattr(pool_cls, POOL_FETCH, None)
        fetch = getattr(fetch, _WRAPPED, fetch)
        if not callable(fetch) or list(inspect.signature(fetch).parameters) != ["self", "future"]:
            problems.append(f"{POOL_MODULE}.{POOL_CLASS}.{POOL_FETCH}(self, future) (where a task's result is "
                            f"fetched) is gone or changed")
        if "_future_to_actor" not in _names_used(getattr(pool_cls, POOL_RETURN, None)):
            problems.append(f"{POOL_MODULE}.{POOL_CLASS}.{POOL_RETURN} no longer takes a task's actor "
                            f"from _future_to_actor")
        missing = [a for a in POOL_ATTRIBUTES if a not in _names_used(pool_cls.__init__)]
        if missing:
            problems.append(f"{POOL_MODULE}.{POOL_CLASS}.__init__ no longer sets {', '.join(missing)}")
        backend_cls = _lookup(BACKEND_MODULE, BACKEND_CLASS, problems)
        names = _names_used(getattr(backend_cls, "process_message", None))
        if backend_cls is not None and (POOL_FETCH not in names or POOL_RETURN not in names):
            problems.append(f"{BACKEND_MODULE}.{BACKEND_CLASS}.process_message no longer fetches a result "
                            f"through {POOL_FETCH} and gives a failed task's actor back through {POOL_RETURN}")
    return problems


def _in_engine_process() -> bool:
    """Whether this process is where the simulation engine will run: its module is loaded
    and Ray not connected yet (a Ray worker is connected before it imports the ClientApp)."""
    if sys.modules.get(VCE_MODULE) is None:
        return False
    ray = sys.modules.get("ray")
    return ray is None or not ray.is_initialized()


def _fetch_or_replace(original: Callable[..., Any]) -> Callable[..., Any]:
    def fetch_result_and_return_actor_to_pool(self: Any, future: Any) -> Any:
        import ray

        try:
            return original(self, future)
        except ray.exceptions.ActorDiedError:
            if future in self._future_to_actor:
                self._future_to_actor[future] = self.create_actor_fn()
                _log.warning("fl-defense: a client actor died; its message failed and a new actor takes its place")
            raise

    fetch_result_and_return_actor_to_pool.__doc__ = original.__doc__
    setattr(fetch_result_and_return_actor_to_pool, _WRAPPED, original)
    return fetch_result_and_return_actor_to_pool


def replace_dead_actors() -> bool:
    """Make the simulation's actor pool replace an actor that died instead of reusing it.

    Acts under the conditions of :func:`shorten_engine_polling` (the engine's module loaded,
    Ray not connected yet), at most once per process; what it relies on is checked by
    :func:`flower_internals_problems` first, and a warning names what is missing when it
    cannot act.

    Returns
    -------
    bool
        Whether the pool replaces dead actors now.
    """
    if not _in_engine_process():
        return False
    problems = [p for p in flower_internals_problems() if POOL_MODULE in p or BACKEND_MODULE in p]
    if problems:
        _log.warning("fl-defense: a dead client actor stays in Flower's pool: %s", "; ".join(problems))
        return False
    pool_cls = _lookup(POOL_MODULE, POOL_CLASS, problems)
    current = getattr(pool_cls, POOL_FETCH)
    if not hasattr(current, _WRAPPED):
        setattr(pool_cls, POOL_FETCH, _fetch_or_replace(current))
    return True


def shorten_engine_polling(interval: float | None = None) -> bool:
    """Make the simulation engine's message extractor poll every ``interval`` seconds.

    Acts only where the engine's module (:data:`VCE_MODULE`) is loaded already and Ray
    is not connected yet (Flower loads the ClientApp before its engine connects to Ray;
    in Ray's workers, where the engine never runs, it does nothing), and at most once per
    process; must run before the engine starts its threads (see the module docstring).

    Parameters
    ----------
    interval : float, optional
        Seconds between the extractor's passes (default: :func:`poll_interval`; ``None``
        there leaves Flower's tick).

    Returns
    -------
    bool
        Whether the extractor polls at ``interval`` now.
    """
    if not _in_engine_process():
        return False
    vce = sys.modules[VCE_MODULE]
    if interval is None:
        interval = poll_interval()
        if interval is None:
            return False
    current = getattr(vce, EXTRACTOR, None)
    if current is not None and hasattr(current, _WRAPPED):
        return True
    problems = [p for p in flower_internals_problems() if VCE_MODULE in p]
    if problems:
        _log.warning("fl-defense: Flower's engine polling left at its own tick: %s", "; ".join(problems))
        return False
    setattr(vce, EXTRACTOR, _extractor_with_interval(current, interval))
    _log.info("fl-defense: the simulation engine's message extractor polls every %g s", interval)
    return True


def shorten_grid_polling(grid: Any, interval: float | None = None) -> bool:
    """Make the ServerApp's in-memory grid look for replies every ``interval`` seconds.

    Parameters
    ----------
    grid : flwr.serverapp.Grid
        The grid the ServerApp is given; only an ``InMemoryGrid`` (the simulation's) is
        changed.
    interval : float, optional
        Seconds between pulls (default: :func:`poll_interval`; ``None`` there leaves the
        grid's).

    Returns
    -------
    bool
        Whether the grid pulls at ``interval`` now.
    """
    grid_module = sys.modules.get(f"{GRID_MODULE}.inmemory_grid") or sys.modules.get(GRID_MODULE)
    grid_cls = getattr(grid_module, GRID_CLASS, None) if grid_module else None
    if grid_cls is None or not isinstance(grid, grid_cls):
        return False
    if interval is None:
        interval = poll_interval()
        if interval is None:
            return False
    if not hasattr(grid, GRID_ATTRIBUTE):
        _log.warning("fl-defense: the grid's polling left as it is: %s has no attribute %r",
                     type(grid).__qualname__, GRID_ATTRIBUTE)
        return False
    setattr(grid, GRID_ATTRIBUTE, interval)
    _log.info("fl-defense: the ServerApp's grid pulls replies every %g s", interval)
    return True
