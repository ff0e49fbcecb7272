"""Serve a model over OpenAI's HTTP API and talk to it with the official client.

    .venv/bin/python examples/openai_server.py

Needs the server extra (``pip install "mlx-local[server]" openai``; the dev
setup has both). Runs offline on the embedded default model
(SmolLM2-135M-Instruct); set MLX_LOCAL_MODEL to serve another. It starts the
server in this process on a free port of 127.0.0.1 (what ``mlx-local serve``
does in its own), then, as any OpenAI app would: asks a question, streams an
answer, and asks for JSON that fits a pydantic class. Then it stops the
server. Any app that takes an OpenAI base URL can use the same server.
"""

import os
import socket
import threading
import time

import uvicorn
from openai import OpenAI
from pydantic import BaseModel

import mlx_local

app = mlx_local.create_app(os.environ.get("MLX_LOCAL_MODEL") or None)  # loads the model, as `serve -m` does

sock = socket.socket()
sock.bind(("127.0.0.1", 0))  # a free port
server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
thread.start()
while not server.started:
    time.sleep(0.05)
base_url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
print(f"serving on {base_url}")

client = OpenAI(base_url=base_url, api_key="unused")  # no --api-key given: any key is accepted
try:
    print("models:", [m.id for m in client.models.list()])

    question = [{"role": "user", "content": "What is the capital of France?"}]
    reply = client.chat.completions.create(model="default", messages=question, max_tokens=24, temperature=0)
    print("answer:", reply.choices[0].message.content)
    print("usage:", reply.usage.prompt_tokens, "prompt tokens,", reply.usage.completion_tokens, "generated")

    print("streamed: ", end="")
    for event in client.chat.completions.create(model="default", messages=question, max_tokens=24, temperature=0,
                                                stream=True):
        if event.choices:
            print(event.choices[0].delta.content or "", end="", flush=True)
    print()

    class City(BaseModel):
        name: str
        country: str

    parsed = client.chat.completions.parse(
        model="default", response_format=City, max_tokens=40,
        messages=[{"role": "user", "content": "Name a city in Italy and its country, as JSON."}],
    )
    print("parsed:", repr(parsed.choices[0].message.parsed))
finally:
    server.should_exit = True
    thread.join(30)
