"""One long-lived daemon thread that runs tasks in order: the bank's writer, and its read-ahead's reader.

Why not a thread per task: `Thread.start` waits until the new thread runs, and that thread may then hold the
GIL for the 5 ms switch interval — 1–4 ms of the training thread's time a step, measured; handing a task to a
thread that waits on a queue returns at once. Why not `ThreadPoolExecutor(max_workers=1)`: its thread is not a
daemon and is joined at interpreter exit, so a run that crashes while a task waits on the device (a store
whose device-to-host copy waits for an all-gather that a dead process never joins) would never exit; this
thread, like the per-step daemon threads before it, does not hold the interpreter up.
"""

from __future__ import annotations

import queue
import threading
import weakref
from concurrent.futures import Future


class Worker:
    """`submit(fn, *args)` → a Future of `fn(*args)`, run on the worker's one daemon thread in submission order.
    The thread starts with the first task and ends at `shutdown`, or when the Worker is garbage-collected."""

    def __init__(self, name: str):
        self.name = name
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        weakref.finalize(self, self._tasks.put, None)  # a Worker dropped without shutdown lets its thread end

    def submit(self, fn, *args, **kwargs) -> Future:
        if self._closed:
            raise RuntimeError(f"{self.name}: submit after shutdown")
        future = Future()
        self._tasks.put((future, fn, args, kwargs))
        if self._thread is None:
            self._thread = threading.Thread(target=_run, args=(self._tasks,), name=self.name, daemon=True)
            self._thread.start()
        return future

    def shutdown(self, wait: bool = True) -> None:
        """No more tasks; the thread ends after those submitted (joined when `wait`)."""
        if self._closed:
            return
        self._closed = True
        self._tasks.put(None)
        if wait and self._thread is not None:
            self._thread.join()


def _run(tasks: queue.SimpleQueue) -> None:
    """The worker thread: holds the queue only (not the Worker), so that the Worker can be collected."""
    while True:
        task = tasks.get()
        if task is None:
            return
        future, fn, args, kwargs = task
        del task
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as err:  # noqa: BLE001  (the caller's result() raises it)
                future.set_exception(err)
        del future, fn, args, kwargs  # drop the task's references (the bank) before waiting for the next
