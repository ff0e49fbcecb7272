"""Load on the server's generation: N concurrent clients for a bounded time, one at a time vs batched.

    .venv/bin/python benchmarks/serve_load.py [--model SOURCE] [--float] [--clients 4] [--duration 20]
        [--repeats 3] [--max-tokens 48] [--target worker|serve] [--url http://127.0.0.1:8080/v1]

Each client sends a chat request (greedy, prompts of different lengths), reads
its streamed answer to the end, and sends the next, until ``--duration``
seconds have passed; the run ends when every answer in flight is complete.
Three configurations, interleaved round by round (A B C A B C ...):

- ``1 client``: one client, batching on (what a single user gets);
- ``N clients, one at a time``: the worker with ``max_concurrency=1``;
- ``N clients, batched``: the worker with ``max_concurrency=N``.

Per configuration: total generated tokens/s (all clients: the tokens that
arrived while the clients were sending, over ``--duration``; and all tokens
over the wall time, tail included), p50/p99 time to first token and latency per request (client side,
from sending to the first text and to the end), requests complete and lost.
Every answer is checked against the one-at-a-time answer to the same prompt.
And the cost of a decode step by number of rows (1, 2, 4, 8 sequences),
which is what batching buys.

Targets: ``worker`` (default) drives :class:`mlx_local._worker.Worker` in
process; ``serve`` starts the HTTP server (``mlx_local._serve_app``, when
present) on a free loopback port per configuration and talks to it with the
``openai`` client, streaming; ``--url`` uses a server already running (then
only the two client counts are compared: its concurrency is its own).

Writes benchmarks/results/serve_load[_float32].json and .png.
"""

from __future__ import annotations

import argparse
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import mlx_local

from common import device, median, write

PROMPTS = [
    "Name a colour.",
    "Write a short poem about the sea.",
    "What is the capital of France, and what is it famous for?",
    "Explain in two sentences why the sky is blue.",
    "List three fruits and say which one you like best, and why.",
    "Tell me a story about a dragon who learned to fly, a knight who was afraid of heights, and a village by a lake.",
    "What is 2+2?",
    "Give me a tip for learning to cook.",
]


@dataclass
class Outcome:
    """One request, as its client saw it."""

    prompt: int
    text: str = ""
    tokens: int = 0
    ttft: float | None = None
    latency: float = 0.0
    finish: str | None = None
    error: str | None = None
    #: (time.perf_counter(), tokens) of each piece as it arrived
    arrivals: list[tuple[float, int]] = field(default_factory=list)


@dataclass
class Run:
    """One configuration, once."""

    name: str
    clients: int
    duration: float
    start: float = 0.0
    wall: float = 0.0
    outcomes: list[Outcome] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        done = [o for o in self.outcomes if o.finish is not None and o.error is None]
        tokens = sum(o.tokens for o in done)
        # While every client is sending (the window), not the tail of answers finishing after it.
        window = sum(n for o in self.outcomes for t, n in o.arrivals if t - self.start <= self.duration)

        def pct(xs: list[float], q: float) -> float | None:
            if not xs:
                return None
            xs = sorted(xs)
            return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]

        ttft = [o.ttft for o in done if o.ttft is not None]
        lat = [o.latency for o in done]
        return {
            "name": self.name, "clients": self.clients, "wall_s": self.wall, "requests": len(self.outcomes),
            "complete": len(done), "lost": len(self.outcomes) - len(done), "tokens": tokens,
            "tokens_per_s": window / self.duration, "tokens_per_s_overall": tokens / self.wall if self.wall else 0.0,
            "ttft_p50": pct(ttft, 0.5), "ttft_p99": pct(ttft, 0.99), "latency_p50": pct(lat, 0.5), "latency_p99": pct(lat, 0.99),
            "errors": sorted({o.error for o in self.outcomes if o.error}),
        }  # fmt: skip


# ------------------------------------------------------------------ clients


def worker_client(worker: Any, model: mlx_local.Model, max_tokens: int) -> Callable[[int], Outcome]:
    """One request through the in-process Worker."""

    def ask(i: int) -> Outcome:
        out = Outcome(i)
        request = model.prepare([{"role": "user", "content": PROMPTS[i]}], max_tokens=max_tokens, temperature=0.0,
                                reuse_cache=False)  # fmt: skip
        start = time.perf_counter()
        try:
            parts = []
            for chunk in worker.submit(request):
                now = time.perf_counter()
                out.arrivals.append((now, len(chunk.token_ids)))
                if out.ttft is None and chunk.text:
                    out.ttft = now - start
                if chunk.kind == "content":
                    parts.append(chunk.text)
                if chunk.stats is not None:
                    out.tokens, out.finish = chunk.stats.generated_tokens, chunk.finish_reason
            out.text = "".join(parts)
        except Exception as e:  # counted as lost
            out.error = f"{type(e).__name__}: {e}"
        out.latency = time.perf_counter() - start
        return out

    return ask


def http_client(base_url: str, max_tokens: int, api_key: str = "none") -> Callable[[int], Outcome]:
    """One streamed chat completion through the openai client."""
    import openai

    local = threading.local()

    def ask(i: int) -> Outcome:
        if not hasattr(local, "client"):
            local.client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=600)
        out = Outcome(i)
        start = time.perf_counter()
        try:
            stream = local.client.chat.completions.create(
                model="default", messages=[{"role": "user", "content": PROMPTS[i]}], max_tokens=max_tokens,
                temperature=0.0, stream=True, stream_options={"include_usage": True},
            )  # fmt: skip
            parts = []
            for chunk in stream:
                for choice in chunk.choices:
                    if choice.delta.content:
                        now = time.perf_counter()
                        out.arrivals.append((now, 1))  # (a delta is about a token: the server streams each as it comes)
                        if out.ttft is None:
                            out.ttft = now - start
                        parts.append(choice.delta.content)
                    if choice.finish_reason is not None:
                        out.finish = choice.finish_reason
                if chunk.usage is not None:
                    out.tokens = chunk.usage.completion_tokens
            out.text = "".join(parts)
        except Exception as e:  # counted as lost
            out.error = f"{type(e).__name__}: {e}"
        out.latency = time.perf_counter() - start
        return out

    return ask


def load(ask: Callable[[int], Outcome], name: str, clients: int, duration: float) -> Run:
    """``clients`` closed-loop clients sending requests for ``duration`` seconds; waits for every answer."""
    run = Run(name, clients, duration)
    lock = threading.Lock()
    start = run.start = time.perf_counter()

    def client(c: int) -> None:
        j = 0
        while time.perf_counter() - start < duration:
            o = ask((c + j * clients) % len(PROMPTS))
            with lock:
                run.outcomes.append(o)
            j += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run.wall = time.perf_counter() - start
    return run


# ------------------------------------------------------------------ targets


class Server:
    """The HTTP server in process (uvicorn in a thread) on a free loopback port."""

    def __init__(self, model: mlx_local.Model, max_concurrency: int) -> None:
        import socket

        import uvicorn

        from mlx_local._serve_app import create_app

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        app = create_app(model, max_concurrency=max_concurrency)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{port}/v1"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def configurations(args: argparse.Namespace, model: mlx_local.Model | None) -> list[tuple[str, int, Any]]:
    """(name, clients, factory) per configuration; the factory gives ``(ask, close)``."""
    n = args.clients

    def worker(k: int) -> Any:
        def make() -> tuple[Callable[[int], Outcome], Callable[[], None]]:
            from mlx_local._worker import Worker

            assert model is not None
            from mlx_local._batch import DEFAULT_PREFILL_STEP

            w = Worker(model, max_concurrency=k, prefill_step_size=args.prefill_step or DEFAULT_PREFILL_STEP)
            return worker_client(w, model, args.max_tokens), w.close

        return make

    def served(k: int) -> Any:
        def make() -> tuple[Callable[[int], Outcome], Callable[[], None]]:
            assert model is not None
            s = Server(model, k)
            return http_client(s.url, args.max_tokens), s.close

        return make

    if args.url:
        def remote() -> tuple[Callable[[int], Outcome], Callable[[], None]]:
            return http_client(args.url, args.max_tokens, args.api_key), lambda: None

        return [("1 client", 1, remote), (f"{n} clients", n, remote)]
    kind = served if args.target == "serve" else worker
    return [("1 client", 1, kind(n)), (f"{n} clients, one at a time", n, kind(1)), (f"{n} clients, batched", n, kind(n))]


# ------------------------------------------------------------------ rows


def step_costs(model: mlx_local.Model, rows: list[int], repeats: int) -> dict[str, float]:
    """Median ms of one decode step of the batch engine with ``rows`` sequences (interleaved)."""
    from mlx_local._batch import BatchEngine

    request_of = lambda: model.prepare([{"role": "user", "content": PROMPTS[5]}], max_tokens=64, temperature=0.0,  # noqa: E731
                                       stop_loops=False, reuse_cache=False)  # fmt: skip
    times: dict[int, list[float]] = {b: [] for b in rows}
    for _ in range(repeats):
        for b in rows:
            engine = BatchEngine(model, max_concurrency=max(rows))
            for _ in range(b):
                engine.add(request_of(), lambda c: None)
            for _ in range(3):  # prefill and the first tokens
                engine.step()
            t = time.perf_counter()
            for _ in range(12):
                engine.step()
            times[b].append((time.perf_counter() - t) / 12 * 1000)
            engine.close()
    return {str(b): median(v) for b, v in times.items()}


# ------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a model source (default: the SmolLM2 test asset)")
    ap.add_argument("--float", action="store_true", help="SmolLM2's GGUF dequantized to float32")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds each configuration sends requests")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--target", choices=("worker", "serve"), default="worker")
    ap.add_argument("--url", default=None, help="a running server's base URL (.../v1)")
    ap.add_argument("--api-key", default="none")
    ap.add_argument("--no-rows", action="store_true", help="skip the decode step cost by rows")
    ap.add_argument("--prefill-step", type=int, default=None, help="the worker's prefill_step_size (default: its own)")
    ap.add_argument("--tag", default="", help="appended to the output files' names")
    args = ap.parse_args()

    model: mlx_local.Model | None = None
    if not args.url or not args.no_rows:
        from mlx_local import _assets

        source = args.model or _assets.path("smollm2")
        model = mlx_local.Model.load(source, gguf_weights="float" if args.float else "quantized")
        print(model)
    configs = configurations(args, model)
    if model is not None:  # warm up: the first forward passes compile and allocate
        list(model.execute(model.prepare([{"role": "user", "content": PROMPTS[0]}], max_tokens=4, reuse_cache=False)))
    rounds: list[list[dict[str, Any]]] = []
    answers: dict[int, set[str]] = {}
    reference: dict[int, str] = {}
    for r in range(args.repeats):
        row = []
        for name, clients, make in configs:
            ask, close = make()
            try:
                run = load(ask, name, clients, args.duration)
            finally:
                close()
            s = run.summary()
            row.append(s)
            print(f"round {r + 1} {name:28s} {s['tokens_per_s']:6.1f} tok/s ({s['tokens_per_s_overall']:.1f} overall)  "
                  f"{s['complete']}/{s['requests']} complete  "
                  f"ttft p50 {s['ttft_p50'] or 0:.2f}s  latency p50 {s['latency_p50'] or 0:.2f}s", flush=True)  # fmt: skip
            for o in run.outcomes:
                if o.error is None and o.finish is not None:
                    answers.setdefault(o.prompt, set()).add(o.text)
                    if "one at a time" in name or (args.url and clients == 1):
                        reference.setdefault(o.prompt, o.text)
        rounds.append(row)

    names = [name for name, _, _ in configs]
    per_config = {}
    for i, name in enumerate(names):
        runs = [row[i] for row in rounds]
        per_config[name] = {k: median([x[k] for x in runs if x[k] is not None]) if any(x[k] is not None for x in runs) else None
                            for k in ("tokens_per_s", "tokens_per_s_overall", "ttft_p50", "ttft_p99", "latency_p50", "latency_p99")}  # fmt: skip
        per_config[name].update(requests=sum(x["requests"] for x in runs), complete=sum(x["complete"] for x in runs),
                                lost=sum(x["lost"] for x in runs), errors=sorted({e for x in runs for e in x["errors"]}))  # fmt: skip
    one, many = names[0], names[-1]
    ratios = [row[-1]["tokens_per_s"] / row[0]["tokens_per_s"] for row in rounds if row[0]["tokens_per_s"]]
    overall = [row[-1]["tokens_per_s_overall"] / row[0]["tokens_per_s_overall"] for row in rounds if row[0]["tokens_per_s_overall"]]
    result: dict[str, Any] = {
        "device": device(),
        "model": model.name if model is not None else args.url,
        "dtype": model.dtype if model is not None else None,
        "quantization": model.quantization if model is not None else None,
        "native": mlx_local._cpu_kernels.native_status() if model is not None else None,
        "target": "url" if args.url else args.target,
        "prefill_step_size": args.prefill_step, "clients": args.clients, "duration_s": args.duration, "repeats": args.repeats, "max_tokens": args.max_tokens,
        "configs": per_config, "rounds": rounds,
        "ratio_batched_vs_one_client": median(ratios) if ratios else None,
        "ratio_per_round": ratios,
        "ratio_overall_batched_vs_one_client": median(overall) if overall else None,
        "answers_match_one_at_a_time": all(texts == {reference[p]} for p, texts in answers.items() if p in reference),
        "prompts_answered": len(answers),
    }  # fmt: skip
    if len(names) == 3:
        seq = [row[-1]["tokens_per_s"] / row[1]["tokens_per_s"] for row in rounds if row[1]["tokens_per_s"]]
        result["ratio_batched_vs_one_at_a_time"] = median(seq) if seq else None
    if model is not None and not args.no_rows:
        rows = [1, 2, 4, 8]
        result["step_ms_by_rows"] = step_costs(model, rows, args.repeats)
        print("decode step ms by rows:", {k: round(v, 1) for k, v in result["step_ms_by_rows"].items()})
    ratio, whole = result["ratio_batched_vs_one_client"], result["ratio_overall_batched_vs_one_client"]
    print(f"{many} vs {one}: x{ratio or 0:.2f} total tokens/s in the window (per round: "
          f"{', '.join(f'{x:.2f}' for x in ratios)}), x{whole or 0:.2f} overall; "
          f"answers match one at a time: {result['answers_match_one_at_a_time']}")
    suffix = ("_float32" if args.float else "") + (f"_{args.tag}" if args.tag else "")
    path = write(f"serve_load{suffix}", result)
    import charts

    print("wrote", path, charts.serve_load(result, path.with_suffix(".png")))


if __name__ == "__main__":
    main()
