"""The client side of forkworker's Celery rows, driven by benches/compare/celery.rs over stdin/stdout.

One command per line on stdin, one answer line on stdout ("ok <numbers>" or "err <why>"):
  ready SECONDS  wait until the worker answers an empty call (each try waits 1 s), then warm up
                 (100 round trips, 500 pipelined calls): "ok <seconds waited>"
  rt N           N empty calls one after another, `empty.delay().get()`, each timed alone:
                 "ok <median s> <p10 s> <p90 s>"
  tp N           N empty calls sent (`[empty.delay() for _ in range(N)]`), then every result
                 taken in order (`.get()`), timed from the first send to the last result:
                 "ok <calls/s> <lost>" (lost: results missing after 30 s or not None)
  echo LEN N     N echoes of a LEN-character string, one after another: "ok <median s> <lost>"
  quit           exit
Interpreter start-up and Celery's imports happen before the first command, outside any timing.
"""

import statistics
import sys
import time

from celery.exceptions import TimeoutError as CeleryTimeout

from fw_bench_app import echo, empty

GET_TIMEOUT = 30.0


def answer(*fields):
    sys.stdout.write(" ".join(str(f) for f in fields) + "\n")
    sys.stdout.flush()


def round_trips(n):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        empty.delay().get(timeout=GET_TIMEOUT)
        times.append(time.perf_counter() - t)
    times.sort()
    return times


def pipelined(n):
    t = time.perf_counter()
    results = [empty.delay() for _ in range(n)]
    lost = 0
    for r in results:
        try:
            if r.get(timeout=GET_TIMEOUT) is not None:
                lost += 1
        except CeleryTimeout:
            lost += 1
    return n / (time.perf_counter() - t), lost


def ready(seconds):
    t = time.monotonic()
    while True:
        try:
            empty.delay().get(timeout=1.0)
            break
        except CeleryTimeout:
            if time.monotonic() - t > seconds:
                raise
    waited = time.monotonic() - t
    round_trips(100)
    pipelined(500)
    return waited


def echoes(length, n):
    data = "x" * length
    times, lost = [], 0
    for _ in range(n):
        t = time.perf_counter()
        if echo.delay(data).get(timeout=GET_TIMEOUT) != data:
            lost += 1
        times.append(time.perf_counter() - t)
    return statistics.median(times), lost


def main():
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        try:
            if words[0] == "quit":
                return
            if words[0] == "ready":
                answer("ok", ready(float(words[1])))
            elif words[0] == "rt":
                times = round_trips(int(words[1]))
                answer("ok", statistics.median(times), times[len(times) // 10],
                       times[len(times) * 9 // 10])
            elif words[0] == "tp":
                answer("ok", *pipelined(int(words[1])))
            elif words[0] == "echo":
                answer("ok", *echoes(int(words[1]), int(words[2])))
            else:
                answer("err", "unknown command", words[0])
        except Exception as e:  # report any failure to the bench, which stops its rows
            answer("err", type(e).__name__, str(e).replace("\n", " "))


if __name__ == "__main__":
    main()
