#!/usr/bin/env python3
"""Checks docs/amqp.md: a Python client written from that page alone
(pika + protobuf) joins the chat and exchanges messages with the Rust
`amqp-client`.

    pip install pika protobuf grpcio-tools
    cargo build -p chat-amqp
    python3 scripts/amqp_contract_check.py

Uses AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f) and a fresh
namespace, starts its own amqp-server, and removes every queue it created.
Exits 0 and prints "contract check passed" when everything holds.
"""

import json
import os
import pathlib
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import pika
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"
URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
NS = "contract-" + uuid.uuid4().hex[:10]
WAIT = 60.0


def load_proto(tmp):
    """Generates chat_pb2 from proto/chat.proto into `tmp` and imports it."""
    rc = protoc.main([
        "protoc",
        f"-I{ROOT / 'proto'}",
        f"--python_out={tmp}",
        str(ROOT / "proto" / "chat.proto"),
    ])
    if rc != 0:
        sys.exit("protoc failed")
    sys.path.insert(0, tmp)
    import chat_pb2  # noqa: E402
    return chat_pb2


class PyClient:
    """A chat client following docs/amqp.md."""

    def __init__(self, pb, client_id, secret=None):
        self.pb = pb
        self.id = client_id
        # The secret that claims the ID on first register: 256 random bits.
        self.secret = secret or secrets.token_hex(32)
        self.conn = pika.BlockingConnection(pika.URLParameters(URL))
        self.ch = self.conn.channel()
        self.ch.confirm_delivery()
        # Exclusive, server-named reply queue, consumed with auto-ack.
        self.reply_queue = self.ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
        self.replies = {}
        self.ch.basic_consume(self.reply_queue, self._on_reply, auto_ack=True)
        self.inbox = []
        self.last_seq = 0

    def _on_reply(self, ch, method, props, body):
        reply = self.pb.Reply()
        reply.ParseFromString(body)
        self.replies[props.correlation_id] = reply

    def request(self, auth=True, **body):
        corr = str(uuid.uuid4())
        if auth is True:
            auth = self.pb.Auth(client_id=self.id, secret=self.secret)
        req = self.pb.Request(auth=auth or None, **body)
        self.ch.basic_publish(
            exchange="",
            routing_key=f"{NS}.server",
            body=req.SerializeToString(),
            properties=pika.BasicProperties(
                reply_to=self.reply_queue,
                correlation_id=corr,
                delivery_mode=2,
                content_type="application/x-protobuf",
                type="chat.v1.Request",
            ),
            mandatory=True,
        )
        deadline = time.time() + WAIT
        while corr not in self.replies:
            if time.time() > deadline:
                raise AssertionError("no reply from the server")
            self.conn.process_data_events(time_limit=0.2)
        return self.replies.pop(corr)

    def join(self):
        reply = self.request(register=self.pb.RegisterRequest(client_id=self.id))
        assert reply.WhichOneof("body") == "register", reply
        self.ch.basic_qos(prefetch_count=256)
        self.ch.basic_consume(f"{NS}.client.{self.id}", self._on_message, exclusive=True)

    def _on_message(self, ch, method, props, body):
        m = self.pb.ChatMessage()
        m.ParseFromString(body)
        if m.seq > self.last_seq:  # the seq rule: drop repeats
            self.last_seq = m.seq
            self.inbox.append(m)
        ch.basic_ack(method.delivery_tag)

    def send(self, to, text):
        return self.request(send=self.pb.SendRequest(
            id=str(uuid.uuid4()), to=to, text=text, **{"from": self.id}))

    def wait_messages(self, n):
        deadline = time.time() + WAIT
        while len(self.inbox) < n:
            if time.time() > deadline:
                raise AssertionError(f"only {len(self.inbox)} of {n} messages arrived")
            self.conn.process_data_events(time_limit=0.2)
        return self.inbox[:n]


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok   {what}")


def main():
    subprocess.run(["cargo", "build", "-q", "-p", "chat-amqp", "--bins"], cwd=ROOT, check=True)
    env = dict(os.environ, AMQP_URL=URL, CHAT_AMQP_NAMESPACE=NS, RUST_LOG="warn")
    env.pop("CHAT_SECRET", None)
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        # The Rust CLI keeps its generated secret in its state file here.
        env["XDG_STATE_HOME"] = os.path.join(tmp, "state")
        pb = load_proto(tmp)
        server = subprocess.Popen(
            [BIN / "amqp-server", "--data-dir", os.path.join(tmp, "data")], env=env)
        procs.append(server)
        py = None
        try:
            deadline = time.time() + WAIT
            while subprocess.run([BIN / "amqp-server", "health"], env=env,
                                 capture_output=True).returncode != 0:
                if time.time() > deadline:
                    raise AssertionError("amqp-server did not come up")
                time.sleep(0.2)

            py_id = "py-" + uuid.uuid4().hex[:6]
            py = PyClient(pb, py_id)
            py.join()
            check(True, f"python client {py_id} registered and consumes its inbox")

            # A Rust client listening for one message.
            listener = subprocess.Popen(
                [BIN / "amqp-client", "--id", "rusty", "--json", "listen",
                 "--count", "1", "--timeout", str(int(WAIT))],
                env=env, stdout=subprocess.PIPE, text=True)
            procs.append(listener)
            deadline = time.time() + WAIT
            while True:
                reply = py.request(list_clients=pb.ListClientsRequest())
                online = {c.id: c.online for c in reply.list_clients.clients}
                if online.get("rusty"):
                    break
                if time.time() > deadline:
                    raise AssertionError(f"rusty never came online: {online}")
                time.sleep(0.2)
            check(online.get(py_id) is True, "list_clients shows both clients online")

            reply = py.send("rusty", "hello from python")
            check(reply.WhichOneof("body") == "send" and reply.send.id,
                  "python -> rust send accepted")
            out, _ = listener.communicate(timeout=WAIT)
            events = [json.loads(line) for line in out.splitlines() if line.strip()]
            got = [e for e in events if e.get("event") == "message"]
            check(len(got) == 1 and got[0]["from"] == py_id and got[0]["text"] == "hello from python",
                  f"the Rust client received it: {got}")

            # Rust -> Python, through the one-shot CLI.
            subprocess.run([BIN / "amqp-client", "--id", "rusty", "send", py_id, "hello from rust"],
                           env=env, check=True, timeout=WAIT, stdout=subprocess.DEVNULL)
            [m] = py.wait_messages(1)
            check(m.text == "hello from rust" and getattr(m, "from") == "rusty" and m.seq == 1,
                  "the Python client received the Rust client's message with seq 1")

            reply = py.request(history=pb.HistoryRequest(client_id=py_id))
            check([h.text for h in reply.history.messages] == ["hello from python"],
                  "history lists what the Python client sent")

            reply = py.send("rusty", "")
            check(reply.WhichOneof("body") == "error"
                  and reply.error.code == pb.ErrorCode.Value("INVALID_ARGUMENT"),
                  f"an empty text is refused: {reply.error.message!r}")
            reply = py.send("nobody-here", "hi")
            check(reply.error.code == pb.ErrorCode.Value("NOT_FOUND"), "an unknown recipient is refused")

            second = PyClient(pb, py_id, secret=py.secret)
            reply = second.request(register=pb.RegisterRequest(client_id=py_id))
            check(reply.error.code == pb.ErrorCode.Value("ALREADY_EXISTS"),
                  "a second client with an online ID (and its secret) is refused")
            second.conn.close()

            unauthenticated = pb.ErrorCode.Value("UNAUTHENTICATED")
            impostor = PyClient(pb, py_id)  # another secret
            reply = impostor.request(register=pb.RegisterRequest(client_id=py_id))
            check(reply.error.code == unauthenticated,
                  f"register with another secret is refused: {reply.error.message!r}")
            reply = impostor.request(history=pb.HistoryRequest(client_id=py_id))
            check(reply.error.code == unauthenticated, "history with another secret is refused")
            reply = py.request(auth=None, history=pb.HistoryRequest(client_id=py_id))
            check(reply.error.code == unauthenticated, "history without auth is refused")
            impostor.conn.close()
            reply = py.request(send=pb.SendRequest(
                id=str(uuid.uuid4()), to=py_id, text="forged", **{"from": "rusty"}))
            check(reply.error.code == pb.ErrorCode.Value("PERMISSION_DENIED"),
                  "a send whose from is not auth.client_id is refused")
            reply = py.request(auth=None, list_clients=pb.ListClientsRequest())
            check(reply.WhichOneof("body") == "list_clients", "list_clients needs no auth")
            print("contract check passed")
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    try:
                        p.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        p.kill()
            if py is not None and py.conn.is_open:
                py.conn.close()
            cleanup(["rusty", py_id] if py else [])


def cleanup(clients):
    conn = pika.BlockingConnection(pika.URLParameters(URL))
    ch = conn.channel()
    for q in [f"{NS}.server", f"{NS}.dead"] + [f"{NS}.client.{c}" for c in clients]:
        ch.queue_delete(q)
    ch.exchange_delete(f"{NS}.deliver")
    conn.close()


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAIL {e}", file=sys.stderr)
        sys.exit(1)
