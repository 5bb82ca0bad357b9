"""A pool of N environments stepped together, so rollouts batch the model across episodes.

Each env is its own JVM; a py4j call blocks on a socket and releases the GIL, so a
thread per env steps them concurrently (ScienceWorld's 100 ms steps overlap).
"""
from __future__ import annotations

import concurrent.futures
import queue
import threading
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from act_jax.envs.base import EpisodeSpec, TextEnv, TimeStep, make_env

T = TypeVar("T")
R = TypeVar("R")


class EnvPool:
  """N envs of one kind; `reset`/`step` take one entry per env, None = leave it alone.

  Args:
    factory: builds one env (e.g. `lambda: TWXEnv()`), or an env name for `make_env`.
    n: number of envs (JVMs).
    threaded: step the envs in parallel threads.
    **env_kwargs: passed to `make_env` when `factory` is a name.
  """

  def __init__(self, factory: Callable[[], TextEnv] | str, n: int, threaded: bool = True,
               **env_kwargs: Any):
    if n < 1:
      raise ValueError(f"an EnvPool needs n >= 1, got {n}")
    if isinstance(factory, str):
      name = factory
      factory = lambda: make_env(name, **env_kwargs)
    self._executor = (concurrent.futures.ThreadPoolExecutor(max_workers=n, thread_name_prefix="env")
                      if threaded and n > 1 else None)
    self.envs: list[TextEnv] = []
    # JVMs start in parallel; if one fails, the ones that started are stopped.
    try:
      if self._executor is None:
        for _ in range(n):
          self.envs.append(factory())
      else:
        jobs = [self._executor.submit(factory) for _ in range(n)]
        concurrent.futures.wait(jobs)
        self.envs = [j.result() for j in jobs if j.exception() is None]
        for j in jobs:
          if j.exception() is not None:
            raise j.exception()
    except BaseException:
      self.close()
      raise

  def __len__(self) -> int:
    return len(self.envs)

  @property
  def admissible_is_complete(self) -> bool:
    return all(e.admissible_is_complete for e in self.envs)

  def _map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    if self._executor is None:
      return [fn(x) for x in items]
    return list(self._executor.map(fn, items))

  def _apply(self, fn: Callable[[TextEnv, T], R], args: Sequence[T | None]) -> list[R | None]:
    if len(args) != len(self.envs):
      raise ValueError(f"expected {len(self.envs)} entries (one per env), got {len(args)}")
    todo = [i for i, a in enumerate(args) if a is not None]
    done = self._map(lambda i: fn(self.envs[i], args[i]), todo)
    out: list[R | None] = [None] * len(args)
    for i, r in zip(todo, done):
      out[i] = r
    return out

  def reset(self, specs: Sequence[EpisodeSpec | None], gold: bool = False) -> list[TimeStep | None]:
    """Resets env i to specs[i] (skipping None entries)."""
    return self._apply(lambda env, s: env.reset(s, gold=gold), specs)

  def step(self, actions: Sequence[str | None]) -> list[TimeStep | None]:
    """Steps env i with actions[i] (skipping None entries)."""
    return self._apply(lambda env, a: env.step(a), actions)

  def imap_unordered(self, fn: Callable[[TextEnv, T], R],
                     items: Iterable[T]) -> Iterator[tuple[int, R]]:
    """Runs fn(env, item) over items on whichever env is free; yields (index, result).

    For whole-episode jobs (gold replay); an exception in fn is re-raised here.
    """
    items = list(items)
    work: queue.Queue = queue.Queue()
    for i, x in enumerate(items):
      work.put((i, x))
    results: queue.Queue = queue.Queue()
    stop = threading.Event()

    def worker(env: TextEnv) -> None:
      while not stop.is_set():
        try:
          i, x = work.get_nowait()
        except queue.Empty:
          return
        try:
          results.put((i, fn(env, x), None))
        except BaseException as e:  # pylint: disable=broad-except
          results.put((i, None, e))

    if self._executor is None:
      for i, x in enumerate(items):
        yield i, fn(self.envs[0], x)
      return
    futures = [self._executor.submit(worker, env) for env in self.envs]
    try:
      for _ in range(len(items)):
        i, r, err = results.get()
        if err is not None:
          raise err
        yield i, r
    finally:
      stop.set()
      concurrent.futures.wait(futures)

  def close(self) -> None:
    """Stops every JVM; safe to call twice."""
    envs, self.envs = self.envs, []
    for env in envs:
      env.close()
    if self._executor is not None:
      self._executor.shutdown(wait=True)

  def __enter__(self) -> "EnvPool":
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()
