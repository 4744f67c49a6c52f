"""The engine's CPU per put, in instructions: run it under callgrind for two counts.

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        .venv/bin/python bench/store/putcost.py --mode always --keyspace 100000 --puts 16384
    (the same with --puts 49152; the difference of the two "Collected" totals over 32768
    is the cost of one put, two index flushes included; start-up, the key list and the
    prefill cancel out)

Modes: `never` is `Store.put` with durability never (the engine part's PUT); `always` is
what the command server's embedded mode does under durable SETs: `put_nowait` with
write-behind and the index flush on a thread, and `write_pending` once every
`--per-write` puts (one event-loop iteration's worth); with `--sync` a `sync` there too
(the committer thread's part: an fsync each, slow on a busy disk). Keys are 16 bytes,
values 100. Without `--keyspace` every put is a new key, in a fixed shuffled order; with
`--keyspace K` the store is first filled with K keys, closed, opened again and every key
read once (the benchmark's warm-up), and the puts overwrite keys drawn from them at
random, as `redis-benchmark -r K` does against a prefilled server. The key list is made
for the largest count every time, so its cost is the same in both runs.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import tempfile
import time

from postoffice.store.engine import Store

_MAX_PUTS = 200_000
_VALUE = b"v" * 100


def main(argv: list[str] | None = None) -> int:
    """Open a store in a temp dir, do the puts, close it; print the wall time."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("never", "always"), default="always")
    parser.add_argument("--puts", type=int, default=20_000)
    parser.add_argument("--per-write", type=int, default=20)
    parser.add_argument("--sync", action="store_true")
    parser.add_argument("--keyspace", type=int, default=0)
    args = parser.parse_args(argv)
    if not 0 < args.puts <= _MAX_PUTS:
        parser.error(f"--puts must be 1..{_MAX_PUTS}")
    rng = random.Random(7)
    if args.keyspace:
        every_key = [b"key:%012d" % i for i in range(args.keyspace)]
        keys = [every_key[i] for i in rng.choices(range(args.keyspace), k=_MAX_PUTS)]
    else:
        keys = [b"key:%012d" % i for i in range(_MAX_PUTS)]
        rng.shuffle(keys)
    keys = keys[: args.puts]
    with tempfile.TemporaryDirectory(prefix="putcost-") as tmp:
        if args.keyspace:
            with Store.open(tmp, durability="never") as filling:
                for key in every_key:
                    filling.put(key, _VALUE)
        store = Store.open(tmp, durability=args.mode)
        if args.keyspace:
            for key in every_key:
                store.get(key)
        started = time.perf_counter()
        if args.mode == "never":
            put = store.put
            for key in keys:
                put(key, _VALUE)
        else:
            store.flush_in_background = True
            store.write_behind = True
            put_nowait = store.put_nowait
            every = args.per_write
            ticket = 0
            for i, key in enumerate(keys, 1):
                ticket = put_nowait(key, _VALUE)
                if i % every == 0:
                    store.write_pending()
                    if args.sync:
                        store.sync(ticket)
            store.sync(ticket)
        elapsed = time.perf_counter() - started
        store.close()
    collections = "/".join(str(gen["collections"]) for gen in gc.get_stats())
    print(
        f"{args.mode} puts={args.puts} {elapsed * 1e6 / args.puts:.2f} us/put "
        f"gc collections by generation {collections}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
