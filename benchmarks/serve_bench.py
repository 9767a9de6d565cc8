"""`armo serve` under OpenRLHF's load pattern vs offline scoring of the same rows, in one run (loopback only).

OpenRLHF (>= 0.9.1) sends one sample per request, many at once. Here C concurrent clients send single-sample
/get_reward requests (ChatML-templated queries with `prompts`, as OpenRLHF does) until every row has been
scored once, against a server with batching on (default settings) and off (--max-batch 1). The same rows are
scored offline by the same code (`RewardModel.score`, model already loaded). Prints rows/s of each and the
ratio to offline, p50/p99 latency, errors, and the server's resident memory before and after the load.
Rows: responses from examples/*.jsonl (committed), repeated to --rows. Stops by itself.

    python benchmarks/serve_bench.py --rows 256 --clients 16
"""
from __future__ import annotations

import argparse
import json
import os
import select
import signal
import statistics
import subprocess
import sys
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


def chatml_prompt(prompt: str) -> str:
    return f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


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


def load(url: str, rows: list[dict], clients: int) -> dict:
    def one(r: dict) -> tuple[float, bool]:
        p = chatml_prompt(r["prompt"])
        body = json.dumps({"query": [p + r["response"] + "<|im_end|>"], "prompts": [p]}).encode()
        t0 = time.perf_counter()
        try:
            req = urllib.request.Request(url + "/get_reward", data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=600) as resp:
                ok = resp.status == 200 and len(json.loads(resp.read())["rewards"]) == 1
        except Exception:
            ok = False
        return time.perf_counter() - t0, ok

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as ex:
        res = list(ex.map(one, rows))
    wall = time.perf_counter() - t0
    lat = sorted(x for x, _ in res)
    return {"rows_per_s": len(rows) / wall, "p50_ms": 1000 * statistics.median(lat),
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], "errors": sum(not ok for _, ok in res), "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="default: the shipped model")
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--json", default=None)
    ap.add_argument("--server-args", default="", help="more `armo serve` options for the batched run, e.g. '--max-padding 0.3'")
    args = ap.parse_args()
    rows = example_rows(args.rows)

    from armo_cli import RewardModel

    rm = RewardModel(args.model)
    rm.score(rows[:8])  # warm-up
    t0 = time.perf_counter()
    rm.score(rows)
    offline = {"rows_per_s": len(rows) / (time.perf_counter() - t0)}
    del rm

    out = {"rows": len(rows), "clients": args.clients, "offline": offline, "threads": os.cpu_count(),
           "server_args": args.server_args}
    for name, extra in (("batched", args.server_args.split()), ("max-batch 1", ["--max-batch", "1"])):
        proc, url = start(args.model, *extra)
        try:
            load(url, rows[:16], args.clients)  # warm-up
            before = rss_mb(proc.pid)
            r = load(url, rows, args.clients)
            r["rss_mb_before"], r["rss_mb_after"] = before, rss_mb(proc.pid)
            r["ratio_to_offline"] = r["rows_per_s"] / offline["rows_per_s"]
            out[name] = r
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    print(f"serve_bench: {len(rows)} single-sample requests from {args.clients} concurrent clients (loopback), "
          f"{os.cpu_count()} CPU threads; batched server options: {args.server_args or '(defaults)'}")
    print(f"  offline RewardModel.score   {offline['rows_per_s']:8.1f} rows/s")
    for name in ("batched", "max-batch 1"):
        r = out[name]
        print(f"  serve, {name:20s} {r['rows_per_s']:8.1f} rows/s  ({r['ratio_to_offline']:.2f} of offline)  "
              f"p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  errors {r['errors']}  "
              f"RSS {r['rss_mb_before']:.0f} -> {r['rss_mb_after']:.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
