"""The interpreter's floor of a worker's memory: what a fork of a prepared
zygote holds after the task when nothing else runs in it (no jail, no
protocol, no capture), measured the way `csv-agent sandbox profile` measures
a jailed worker (Uss and Pss from /proc/<pid>/smaps_rollup).

It answers "how low could a jailed worker go with this interpreter?": the
zygote's own preparation is run (`zygote.prepare_heap`, the same function the
jail runs), then N children are forked from it; each runs the task (or
nothing, for the idle line) and releases its free heap pages as a worker
does after a cell. The difference between this floor and a jailed worker is
what the jail's set-up and the protocol cost; the floor itself is the
interpreter's copy-on-write (reference counts written into every object the
task touches).

Run it with the image's interpreter (the data stack lives there):

    "$(cargo run -q --release -- image path)/venv/bin/python" \\
        scripts/memory-floor.py datasets/penguins/data.csv

Prints one line per mode, medians over the children, in MiB.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TASK = os.path.join(ROOT, "src", "sandbox", "profile_task.py")
MIB = 1024.0


def rollup(pid: int) -> dict[str, int]:
    """/proc/<pid>/smaps_rollup's kB fields."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as rollup_file:
        for line in rollup_file:
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                fields[parts[0].rstrip(":")] = int(parts[1])
    return fields


def fork_children(count: int, run, settle: float) -> list[dict[str, int]]:
    """Fork `count` children that each call `run()` and then wait; measure
    them all while they are alive, then kill them."""
    children = []
    try:
        for _ in range(count):
            ready_read, ready_write = os.pipe()
            pid = os.fork()
            if pid == 0:
                status = 0
                try:
                    os.close(ready_read)
                    run()
                    os.write(ready_write, b"1")
                    time.sleep(600)
                except BaseException as exc:  # report, never return into the parent's code
                    os.write(2, f"child failed: {type(exc).__name__}: {exc}\n".encode())
                    status = 1
                os._exit(status)
            os.close(ready_write)
            children.append(pid)
            if os.read(ready_read, 1) != b"1":
                raise SystemExit("a child failed before it was measured")
            os.close(ready_read)
        time.sleep(settle)
        return [rollup(pid) for pid in children]
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
            os.waitpid(pid, 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", help="the dataset, loaded as df")
    parser.add_argument("--task", default=DEFAULT_TASK, help="Python run in every child (default: the profile's default task)")
    parser.add_argument("--forks", type=int, default=8, help="children per mode (default 8)")
    args = parser.parse_args()
    if args.forks < 1:
        parser.error("--forks must be at least 1")

    sys.path.insert(0, os.path.join(ROOT, "sandbox-image"))
    gc.disable()  # as the zygote's main(): no collection before the freeze
    import zygote

    zygote.configure_environment(1)
    modules = zygote.import_full_stack()
    try:
        frame, _, _ = zygote.load_csv(os.path.abspath(args.csv))
    except zygote.LoadError as exc:
        print(f"memory-floor: {exc}", file=sys.stderr)
        return 2
    zygote.prepare_heap()
    with open(args.task) as task_file:
        code = compile(task_file.read(), "<task>", "exec")

    def idle() -> None:
        pass

    def task() -> None:
        namespace = {"__name__": "__main__", "df": frame, **modules}
        with contextlib.redirect_stdout(io.StringIO()):
            exec(code, namespace)  # noqa: S102  (the task is the point)
        zygote.release_free_memory()

    print(f"memory floor: {args.csv} · {args.forks} bare fork(s) per line · Python {sys.version.split()[0]}")
    for name, run in (("idle", idle), ("task", task)):
        figures = fork_children(args.forks, run, settle=0.2)
        uss = statistics.median((f["Private_Clean"] + f["Private_Dirty"]) / MIB for f in figures)
        pss = statistics.median(f["Pss"] / MIB for f in figures)
        print(f"{name}: Uss {uss:.2f} MiB, Pss {pss:.2f} MiB (median of {len(figures)})")
    zygote_rss = rollup(os.getpid())["Rss"] / MIB
    print(f"zygote: Rss {zygote_rss:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
