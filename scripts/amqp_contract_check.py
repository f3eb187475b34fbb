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
HEARTBEAT = 5  # docs: negotiate a 5 s heartbeat
MAX_REPLY_BYTES = 4000  # the server's --max-reply-bytes for this check
JOINED = set()  # every client ID registered here, for the cleanup


def server_queue_args():
    """The exact arguments of <ns>.server (docs: Names)."""
    return {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": f"{NS}.dead"}


def url_with_heartbeat():
    sep = "&" if "?" in URL else "?"
    return f"{URL}{sep}heartbeat={HEARTBEAT}"


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
        self.conn = pika.BlockingConnection(pika.URLParameters(url_with_heartbeat()))
        self.ch = self.conn.channel()
        # Declared before the first request, with its exact arguments, so
        # that a request never vanishes for want of a queue.
        self.ch.queue_declare(f"{NS}.server", durable=True, arguments=server_queue_args())
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
        if auth is True:
            auth = self.pb.Auth(client_id=self.id, secret=self.secret)
        return self.request_raw(self.pb.Request(auth=auth or None, **body))

    def request_raw(self, req):
        corr = str(uuid.uuid4())
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
        JOINED.add(self.id)
        self.ch.basic_qos(prefetch_count=256)
        self.ch.basic_consume(f"{NS}.client.{self.id}", self._on_message, exclusive=True)

    def _on_message(self, ch, method, props, body):
        m = self.pb.ChatMessage()
        m.ParseFromString(body)
        if m.seq > self.last_seq:  # the seq rule: drop repeats
            self.last_seq = m.seq
            self.inbox.append(m)
        ch.basic_ack(method.delivery_tag)

    def send(self, to, text, msg_id=None):
        return self.request(send=self.pb.SendRequest(
            id=str(uuid.uuid4()) if msg_id is None else msg_id,
            to=to, text=text, **{"from": self.id}))

    def close(self):
        if self.conn.is_open:
            self.conn.close()

    def wait_messages(self, n):
        deadline = time.time() + WAIT
        while len(self.inbox) < n:
            if time.time() > deadline:
                raise AssertionError(f"only {len(self.inbox)} of {n} messages arrived")
            self.conn.process_data_events(time_limit=0.2)
        return self.inbox[:n]

    def inbox_texts(self):
        return [m.text for m in self.inbox]


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok   {what}")


def main():
    subprocess.run(["cargo", "build", "-q", "-p", "chat-amqp", "--bins"], cwd=ROOT, check=True)
    env = dict(os.environ, AMQP_URL=URL, CHAT_AMQP_NAMESPACE=NS, RUST_LOG="warn",
               CHAT_MAX_REPLY_BYTES=str(MAX_REPLY_BYTES))
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
            check_declarations(pb)
            check_heartbeat(py)
            check_message_ids(pb, py)
            check_history_limit(pb, py)
            check_coming_back(pb, py)
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
            cleanup(["rusty"] + sorted(JOINED))


def check_declarations(pb):
    """Names: exact arguments, integer types, and the silent drop."""
    conn = pika.BlockingConnection(pika.URLParameters(URL))
    ch = conn.channel()
    ch.queue_declare(f"{NS}.server", durable=True, arguments=server_queue_args())
    ch.queue_declare(f"{NS}.dead", durable=True, arguments={"x-max-length": 10000})
    check(True, "<ns>.server and <ns>.dead redeclare with the documented arguments "
                "(x-max-length as a 32-bit int)")
    try:
        ch.queue_declare(f"{NS}.server", durable=True)
        raise AssertionError("a declaration without the arguments was accepted")
    except pika.exceptions.ChannelClosedByBroker as e:
        check(e.reply_code == 406, f"other arguments are refused: {e.reply_text[:60]}...")
    ch = conn.channel()
    ch.confirm_delivery()
    nowhere = "contract-never-" + uuid.uuid4().hex[:8]
    req = pb.Request(list_clients=pb.ListClientsRequest()).SerializeToString()
    ch.basic_publish("", f"{nowhere}.server", req)  # confirmed, yet dropped
    try:
        ch.basic_publish("", f"{nowhere}.server", req, mandatory=True)
        raise AssertionError("a mandatory request to a missing queue was not returned")
    except pika.exceptions.UnroutableError:
        check(True, "without <ns>.server a request is dropped; mandatory returns it")
    conn.close()


def check_heartbeat(py):
    got = py.conn._impl.params.heartbeat
    check(got == HEARTBEAT, f"the broker accepts a {HEARTBEAT} s heartbeat (negotiated {got})")


def check_message_ids(pb, py):
    """An empty send.id is not idempotent; a repeated id is."""
    peer = PyClient(pb, "ids-" + uuid.uuid4().hex[:6])
    peer.join()
    first = py.send(peer.id, "same text", msg_id="")
    again = py.send(peer.id, "same text", msg_id="")
    check(first.send.id and again.send.id and first.send.id != again.send.id,
          "two sends with an empty id are two messages")
    fixed = str(uuid.uuid4())
    a = py.send(peer.id, "once", msg_id=fixed)
    b = py.send(peer.id, "once", msg_id=fixed)
    check(a.send.id == b.send.id == fixed and a.send.timestamp_ms == b.send.timestamp_ms,
          "a repeated id is answered with the same message")
    got = [m.text for m in peer.wait_messages(3)]
    time.sleep(1)
    peer.conn.process_data_events(time_limit=0.5)
    check(got == ["same text", "same text", "once"] and len(peer.inbox) == 3,
          f"the recipient got both empty-id sends and the repeated one once: {peer.inbox_texts()}")
    peer.close()
    return peer.id


def check_history_limit(pb, py):
    big = PyClient(pb, "big-" + uuid.uuid4().hex[:6])
    big.join()
    for _ in range(40):
        assert big.send(py.id, "y" * 100).WhichOneof("body") == "send"
    reply = big.request(history=pb.HistoryRequest(client_id=big.id))
    check(reply.WhichOneof("body") == "error"
          and reply.error.code == pb.ErrorCode.Value("RESOURCE_EXHAUSTED")
          and f"reply limit of {MAX_REPLY_BYTES} bytes" in reply.error.message,
          f"a history over the reply limit is refused: {reply.error.message[:70]}...")
    big.close()


def check_coming_back(pb, py):
    """After a lost connection: no register needed, nothing lost or repeated."""
    last = py.last_seq
    py.close()
    sender = PyClient(pb, "back-" + uuid.uuid4().hex[:6])
    sender.join()
    sender.send(py.id, "while you were away")
    back = PyClient(pb, py.id, secret=py.secret)
    back.last_seq = last  # the seq rule: what it had shown before
    back.ch.basic_qos(prefetch_count=256)
    back.ch.basic_consume(f"{NS}.client.{py.id}", back._on_message, exclusive=True)
    deadline = time.time() + WAIT
    while not any(m.text == "while you were away" for m in back.inbox):
        if time.time() > deadline:
            raise AssertionError(f"the waiting message never came: {back.inbox_texts()}")
        back.conn.process_data_events(time_limit=0.2)
    check(all(m.seq > last for m in back.inbox),
          "consuming again without register gets what waited, nothing shown twice")
    reply = back.request(register=pb.RegisterRequest(client_id=py.id))
    check(reply.WhichOneof("body") == "error"
          and reply.error.code == pb.ErrorCode.Value("ALREADY_EXISTS"),
          "register while consuming says ALREADY_EXISTS (so do not re-register)")
    back.close()
    sender.close()


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
