"""`armo serve` under OpenRLHF's load pattern vs offline scoring of the same rows, in one run (loopback only).

OpenRLHF (>= 0.9.1) sends one sample per request, many at once. Here C concurrent clients send single-sample
/get_reward requests (ChatML-templated queries with `prompts`, as OpenRLHF does) until every row has been
scored once. Two client styles: a new connection per request (OpenRLHF's `requests.post` without a session) and
one kept-alive connection per client. The same rows are scored offline by the same code (`RewardModel.score`,
model already loaded) in the same process; offline and served rounds alternate (--repeats), so that a slow
spell of the machine hits both, and the ratio is reported per round and as the median. Each round also scores
the rows in-process in windows of C rows: C clients with one row each can never hand the server more than C
rows at once, so that figure is the ceiling the server's batching can reach. Then once against a
server with batching off (--max-batch 1). Also: p50/p99 latency, errors, and the server's resident memory
after warm-up and after all rounds. Rows: responses from examples/*.jsonl (committed), repeated to --rows.
Stops by itself.

    python benchmarks/serve_bench.py --rows 256 --clients 16 --repeats 3

With --workers N (#49): a server with N workers (`armo serve --workers N`: N model copies, the cores split between
them) against one with one, both up at once and driven in alternate rounds under the same load (keep-alive clients),
side by side: rows/s, p50/p99, and each server's answers against `RewardModel.score` of the same rows.

    python benchmarks/serve_bench.py --workers 2 --rows 256 --clients 16 --repeats 3
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def example_rows(n: int) -> list[dict]:
    rows = []
    for name in ("eval.jsonl", "pairs.jsonl", "ratings.jsonl"):
        for line in (ROOT / "examples" / name).read_text().splitlines():
            r = json.loads(line)
            for key in ("chosen", "rejected", "response"):
                if isinstance(r.get(key), str) and isinstance(r.get("prompt"), str):
                    rows.append({"prompt": r["prompt"], "response": r[key]})
    return [dict(rows[i % len(rows)], id=f"r{i}") for i in range(n)]


def chatml_prompt(prompt: str | list[dict]) -> str:
    """The policy's prompt as OpenRLHF sends it: the conversation in the policy's chat template (ChatML here), up
    to the assistant's turn."""
    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in turns) + "<|im_start|>assistant\n"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start(model: str | None, *args: str) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-c", "from armo_cli.cli import main; main()", "serve", "--port", "0", "-q", *args]
    if model:
        cmd += ["-m", model]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = b""
    while b"http://" not in line:
        if proc.poll() is not None:
            raise SystemExit(f"server did not start: {proc.stderr.read().decode()[-1000:]}")
        if select.select([proc.stdout], [], [], 1.0)[0]:
            line = proc.stdout.readline()
    return proc, line.decode().split(" on ")[1].split()[0]


def load(url: str, rows: list[dict], clients: int, keep_alive: bool) -> dict:
    """Every row once, as one single-sample /get_reward request, from `clients` threads. keep_alive: each
    thread reuses one HTTP/1.1 connection (http.client); otherwise a new connection per request (urllib, like
    OpenRLHF's `requests.post` without a session)."""
    host, port = url.split("//")[1].split(":")
    local = threading.local()

    def post(body: bytes) -> bytes:
        if not keep_alive:
            req = urllib.request.Request(url + "/get_reward", data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=600) as resp:
                return resp.read() if resp.status == 200 else b"{}"
        if getattr(local, "conn", None) is None:
            local.conn = http.client.HTTPConnection(host, int(port), timeout=600)
        local.conn.request("POST", "/get_reward", body, {"Content-Type": "application/json"})
        resp = local.conn.getresponse()
        data = resp.read()
        return data if resp.status == 200 else b"{}"

    def one(r: dict) -> tuple[float, bool]:
        p = chatml_prompt(r["prompt"])
        body = json.dumps({"query": [p + r["response"] + "<|im_end|>"], "prompts": [p]}).encode()
        t0 = time.perf_counter()
        try:
            ok = len(json.loads(post(body)).get("rewards", [])) == 1
        except Exception:
            local.conn = None
            ok = False
        return time.perf_counter() - t0, ok

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as ex:
        res = list(ex.map(one, rows))
    wall = time.perf_counter() - t0
    lat = sorted(x for x, _ in res)
    return {"rows_per_s": len(rows) / wall, "p50_ms": 1000 * statistics.median(lat),
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], "errors": sum(not ok for _, ok in res), "wall_s": wall}


def answers(url: str, rows: list[dict], clients: int) -> list[float]:
    """Each row's reward from the server, one request each, in the rows' order."""
    def one(r: dict) -> float:
        p = chatml_prompt(r["prompt"])
        body = json.dumps({"query": [p + r["response"] + "<|im_end|>"], "prompts": [p]}).encode()
        req = urllib.request.Request(url + "/get_reward", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as resp:
            return json.loads(resp.read())["rewards"][0]

    with ThreadPoolExecutor(clients) as ex:
        return list(ex.map(one, rows))


def compare_workers(args: argparse.Namespace, rows: list[dict]) -> None:
    from armo_cli import RewardModel

    offline = [r["score"] for r in RewardModel(args.model).score(rows)]
    servers = {n: start(args.model, "--workers", str(n), *args.server_args.split()) for n in (1, args.workers)}
    out: dict = {"rows": len(rows), "clients": args.clients, "threads": os.cpu_count(), "workers": args.workers,
                 "rounds": []}
    try:
        for n, (_, url) in servers.items():
            load(url, rows[:32], args.clients, True)  # warm-up
            got = answers(url, rows, args.clients)
            out[f"max_abs_diff_{n}"] = max(abs(a - b) for a, b in zip(got, offline))
            workers = json.loads(urllib.request.urlopen(url + "/info", timeout=60).read())["server"]["workers"]
            out[f"rows_per_worker_{n}"] = [w["rows_scored"] for w in workers]
        for _ in range(args.repeats):  # alternate, so that a slow spell of the machine hits both
            out["rounds"].append({str(n): load(url, rows, args.clients, True) for n, (_, url) in servers.items()})
    finally:
        for proc, _ in servers.values():
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    print(f"serve_bench --workers {args.workers}: {len(rows)} single-sample /get_reward requests from {args.clients} "
          f"kept-alive clients (loopback), {os.cpu_count()} CPU threads, {args.repeats} alternating rounds")
    for n in (1, args.workers):
        rs = [r[str(n)] for r in out["rounds"]]
        o = out[f"workers {n}"] = {"median_rows_per_s": statistics.median(r["rows_per_s"] for r in rs),
                                   "p50_ms": statistics.median(r["p50_ms"] for r in rs),
                                   "worst_p99_ms": max(r["p99_ms"] for r in rs), "errors": sum(r["errors"] for r in rs)}
        print(f"  --workers {n}: {o['median_rows_per_s']:7.1f} rows/s (rounds: "
              + ", ".join(f"{r['rows_per_s']:.1f}" for r in rs) + f")  p50 {o['p50_ms']:6.0f} ms  p99 "
              f"{o['worst_p99_ms']:6.0f} ms  errors {o['errors']}  rows per worker {out[f'rows_per_worker_{n}']}  "
              f"max |score - armo score| {out[f'max_abs_diff_{n}']:.1e}")
    ratio = out[f"workers {args.workers}"]["median_rows_per_s"] / out["workers 1"]["median_rows_per_s"]
    out["ratio"] = ratio
    print(f"  rows/s ratio, {args.workers} workers to 1: {ratio:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


def drive(args: argparse.Namespace) -> None:
    """--drive URL: one load against a server that runs elsewhere (benchmarks/gpu_serve_jobs.py runs the server in
    the process that holds the model, and the clients here, in a process of their own), its figures as JSON."""
    rows = [json.loads(x) for x in Path(args.rows_file).read_text().splitlines()]
    deadline = time.monotonic() + 120
    while True:  # the server may still be starting
        try:
            with urllib.request.urlopen(args.drive + "/health", timeout=5):
                break
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"{args.drive}: no answer in 120 s")
            time.sleep(0.2)
    load(args.drive, rows[: 2 * args.clients], args.clients, args.keep_alive)  # warm-up: connections, shapes
    Path(args.json).write_text(json.dumps(load(args.drive, rows, args.clients, args.keep_alive)) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--drive", default=None, help="only the clients, against this server URL (with --rows-file, --json)")
    ap.add_argument("--rows-file", default=None)
    ap.add_argument("--keep-alive", action="store_true", help="--drive: one kept-alive connection per client")
    ap.add_argument("--model", default=None, help="default: the shipped model")
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3, help="rounds of offline / new-connection / keep-alive, interleaved")
    ap.add_argument("--json", default=None)
    ap.add_argument("--server-args", default="", help="more `armo serve` options for the batched run, e.g. '--max-padding 0.3'")
    ap.add_argument("--workers", type=int, default=None, help="compare `armo serve --workers N` with one worker")
    args = ap.parse_args()
    if args.drive:
        return drive(args)
    rows = example_rows(args.rows)
    if args.workers:
        return compare_workers(args, rows)

    from armo_cli import RewardModel

    rm = RewardModel(args.model)
    rm.score(rows[:8])  # warm-up
    out: dict = {"rows": len(rows), "clients": args.clients, "threads": os.cpu_count(), "server_args": args.server_args,
                 "repeats": []}
    arms = (("new connection", False), ("keep-alive", True))
    proc, url = start(args.model, *args.server_args.split())
    try:
        load(url, rows[:32], args.clients, True)  # warm-up
        before = rss_mb(proc.pid)
        # offline and served measurements alternate, so that a slow spell of the machine hits both
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            rm.score(rows)
            rep = {"offline_rows_per_s": len(rows) / (time.perf_counter() - t0)}
            # the ceiling for a server whose batches hold `clients` rows: the same code on windows of that size
            t0 = time.perf_counter()
            for i in range(0, len(rows), args.clients):
                rm.score(rows[i:i + args.clients])
            rep["windows_rows_per_s"] = len(rows) / (time.perf_counter() - t0)
            rep["windows_ratio"] = rep["windows_rows_per_s"] / rep["offline_rows_per_s"]
            for name, ka in arms:
                r = load(url, rows, args.clients, ka)
                r["ratio_to_offline"] = r["rows_per_s"] / rep["offline_rows_per_s"]
                rep[name] = r
            out["repeats"].append(rep)
        out["rss_mb_before"], out["rss_mb_after"] = before, rss_mb(proc.pid)
        # one client alone, one request at a time: a connection's own latency (a kept-alive one used to wait
        # for the client's delayed ACK, about 40 ms, until armo's socket turned Nagle's algorithm off)
        out["one client"] = {name: load(url, rows[:32], 1, ka) for name, ka in arms}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    del rm
    proc, url = start(args.model, "--max-batch", "1")  # batching off, once, for comparison
    try:
        load(url, rows[:16], args.clients, True)
        out["max-batch 1 (keep-alive)"] = load(url, rows, args.clients, True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)

    reps = out["repeats"]
    off = statistics.median(r["offline_rows_per_s"] for r in reps)
    print(f"serve_bench: {len(rows)} single-sample /get_reward requests from {args.clients} concurrent clients "
          f"(loopback), {os.cpu_count()} CPU threads, {len(reps)} interleaved rounds; batched server options: "
          f"{args.server_args or '(defaults)'}")
    print(f"  offline RewardModel.score    {off:8.1f} rows/s (median; rounds: "
          + ", ".join(f"{r['offline_rows_per_s']:.1f}" for r in reps) + ")")
    win = [r["windows_ratio"] for r in reps]
    out["windows"] = {"median_ratio_to_offline": statistics.median(win), "ratios": win}
    print(f"  in-process, {args.clients}-row windows {statistics.median(r['windows_rows_per_s'] for r in reps):5.1f} rows/s  "
          f"ratio to offline {statistics.median(win):.2f} (median; rounds: " + ", ".join(f"{x:.2f}" for x in win)
          + "): the most a server with batches of one row per client can reach")
    for name, _ in arms:
        ratios = [r[name]["ratio_to_offline"] for r in reps]
        med = statistics.median(ratios)
        worst = max(reps, key=lambda r: r[name]["p99_ms"])[name]
        out[name] = {"median_ratio_to_offline": med, "ratios": ratios,
                     "median_rows_per_s": statistics.median(r[name]["rows_per_s"] for r in reps),
                     "p50_ms": statistics.median(r[name]["p50_ms"] for r in reps), "worst_p99_ms": worst["p99_ms"],
                     "errors": sum(r[name]["errors"] for r in reps)}
        o = out[name]
        print(f"  serve, {name:21s} {o['median_rows_per_s']:8.1f} rows/s  ratio to offline {med:.2f} (median; rounds: "
              + ", ".join(f"{x:.2f}" for x in ratios) + f")  p50 {o['p50_ms']:6.0f} ms  p99 {o['worst_p99_ms']:6.0f} ms"
              f"  errors {o['errors']}")
    r = out["max-batch 1 (keep-alive)"]
    print(f"  serve, max-batch 1 (keep-alive) {r['rows_per_s']:5.1f} rows/s  ratio {r['rows_per_s'] / off:.2f}  "
          f"p50 {r['p50_ms']:6.0f} ms  p99 {r['p99_ms']:6.0f} ms  errors {r['errors']}")
    one = out["one client"]
    print("  one client, one request at a time: p50 " + ", ".join(f"{name} {one[name]['p50_ms']:.0f} ms" for name, _ in arms))
    print(f"  server RSS {out['rss_mb_before']:.0f} MB after warm-up -> {out['rss_mb_after']:.0f} MB after "
          f"{len(reps) * len(arms) * len(rows)} requests")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
