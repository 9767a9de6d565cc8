"""Helpers for the tests that talk to `armo serve` (test_serve.py, test_clients.py): the server in a subprocess on a
free port, the chat texts trainers send, and offline scores to compare with."""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.helpers import armo, pair_rows, write_jsonl

KEY = "test-secret"
# uvicorn finishes in-flight requests, then re-raises the signal it caught: the exit status says SIGTERM
STOPPED = (0, -signal.SIGTERM)
MAX_LENGTH = 96


def rows_of(n: int, seed: int = 3) -> list[dict]:
    """Single-response rows: a prompt (string or messages) and a response."""
    out = []
    for r in pair_rows(n, seed=seed):
        out.append({"id": r["id"], "prompt": r["prompt"], "response": r["chosen"]})
    return out


def messages(prompt) -> list[dict]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def chatml(msgs: list[dict], response: str | None = None) -> str:
    s = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in msgs) + "<|im_start|>assistant\n"
    return s if response is None else s + response + "<|im_end|>\n<|endoftext|>"


def llama3(msgs: list[dict], response: str | None = None) -> str:
    s = "<|begin_of_text|>" + "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>"
                                      for m in msgs) + "<|start_header_id|>assistant<|end_header_id|>\n\n"
    return s if response is None else s + response + "<|eot_id|>"


def gemma(msgs: list[dict], response: str | None = None) -> str:
    role = {"user": "user", "assistant": "model"}
    s = "<bos>" + "".join(f"<start_of_turn>{role[m['role']]}\n{m['content']}<end_of_turn>\n" for m in msgs) + "<start_of_turn>model\n"
    return s if response is None else s + response + "<end_of_turn>\n"


def mistral(msgs: list[dict], response: str | None = None) -> str:
    s = "<s>"
    for m in msgs:
        s += f"[INST] {m['content']} [/INST]" if m["role"] == "user" else f" {m['content']}</s>"
    return s if response is None else s + " " + response + "</s>"


TEMPLATES = {"chatml": chatml, "llama3": llama3, "gemma": gemma, "mistral": mistral}


def openrlhf_body(row: dict) -> dict:
    """One row as OpenRLHF sends it: the ChatML-rendered query with its prompt part beside."""
    msgs = messages(row["prompt"])
    return {"query": [chatml(msgs, row["response"])], "prompts": [chatml(msgs)]}


def offline_scores(model: Path, rows: list[dict], tmp_path: Path) -> list[float]:
    f = write_jsonl(tmp_path / "offline.jsonl", rows)
    r = armo("score", "-m", str(model), str(f), "--max-length", str(MAX_LENGTH), "--format", "jsonl", "-q")
    assert r.code == 0, r.stderr
    return [json.loads(line)["score"] for line in r.stdout.splitlines()]


# --- the server in a subprocess ------------------------------------------------------------------


class Server:
    def __init__(self, model: Path, cache: Path, *args: str, quiet: bool = True):
        env = {**os.environ, "ARMO_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
        env.pop("ARMO_API_KEY", None)
        self.proc = subprocess.Popen([sys.executable, "-c", "from armo_cli.cli import main; main()", "serve", "-m", str(model),
                                      "--port", "0", "--max-length", str(MAX_LENGTH), "--device", "cpu",
                                      *(["-q"] if quiet else []), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        line, t0 = b"", time.time()
        while b"http://" not in line:
            ready, _, _ = select.select([self.proc.stdout], [], [], 1.0)
            if self.proc.poll() is not None or time.time() - t0 > 120:
                raise RuntimeError(f"server did not start: {self.proc.stderr.read().decode()[-2000:]}")
            if ready:
                line = self.proc.stdout.readline()
        self.url = line.decode().split(" on ")[1].split()[0]

    def request(self, path: str, body=None, *, key: str | None = KEY, raw: bytes | None = None, method: str | None = None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
        req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                return resp.status, json.loads(resp.read()), dict(resp.headers)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read()), dict(e.headers)

    def stop(self) -> int:
        """SIGTERM unless it has exited; its exit status. What it printed is kept in `out` and `err`."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        finally:
            self.out, self.err = self.proc.stdout.read().decode(), self.proc.stderr.read().decode()
            self.proc.stdout.close()
            self.proc.stderr.close()
