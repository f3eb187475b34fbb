#!/usr/bin/env python3
"""Checks docs/amqp.md: a Python client written from that page alone
(pika + protobuf) joins the chat and exchanges messages with the Rust
`amqp-client`.

    pip install pika protobuf grpcio-tools
    cargo build -p chat-amqp
    python3 scripts/amqp_contract_check.py

Uses AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f) and a fresh
namespace, starts its own amqp-server, and removes every queue it created.
A second part runs the chat with per-client broker users (docs/amqp.md,
"Broker accounts") in another fresh namespace: it needs RabbitMQ's
management API at CHAT_AMQP_MANAGEMENT_URL (default
http://guest:guest@127.0.0.1:15672) and deletes the users it caused.
Exits 0 and prints "contract check passed" when everything holds.
"""

import base64
import json
import os
import pathlib
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
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
MGMT = os.environ.get("CHAT_AMQP_MANAGEMENT_URL", "http://guest:guest@127.0.0.1:15672")
NS2 = "contract-pc-" + uuid.uuid4().hex[:10]  # the per-client part
REGISTER_PASSWORD = "chat-register"  # docs: the bootstrap user's default


def server_queue_args(ns=None):
    """The exact arguments of <ns>.server (docs: Names)."""
    return {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": f"{ns or NS}.dead"}


def url_with_heartbeat(login=None):
    """AMQP_URL with a short heartbeat, and `login` (user, password) in
    place of its own account when given (per-client broker users)."""
    url = URL
    if login is not None:
        u = urllib.parse.urlsplit(URL)
        user, password = (urllib.parse.quote(x, safe="") for x in login)
        host = u.netloc.rsplit("@", 1)[-1]
        url = urllib.parse.urlunsplit((u.scheme, f"{user}:{password}@{host}", u.path, u.query, ""))
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}heartbeat={HEARTBEAT}"


def declare_request_route(ch, ns):
    """Shared account: <ns>.server with its exact arguments, the request
    exchange <ns>.requests and the binding (docs: Names)."""
    ch.queue_declare(f"{ns}.server", durable=True, arguments=server_queue_args(ns))
    ch.exchange_declare(f"{ns}.requests", exchange_type="direct", durable=True)
    ch.queue_bind(f"{ns}.server", f"{ns}.requests", routing_key=f"{ns}.server")


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

    def __init__(self, pb, client_id, secret=None, ns=None, login=None):
        """`login`: the broker user and password (per-client mode); None:
        the shared account of AMQP_URL."""
        self.pb = pb
        self.id = client_id
        self.ns = ns or NS
        # The secret that claims the ID on first register: 256 random bits.
        self.secret = secret or secrets.token_hex(32)
        self.conn = pika.BlockingConnection(pika.URLParameters(url_with_heartbeat(login)))
        self.ch = self.conn.channel()
        if login is None:
            # Declared before the first request, with its exact arguments,
            # so that a request never vanishes for want of a queue. (A
            # per-client user may not; the server has.)
            declare_request_route(self.ch, self.ns)
        self.ch.confirm_delivery()
        # Exclusive, server-named reply queue, consumed with auto-ack.
        self.reply_queue = self.ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
        self.replies = {}
        self.ch.basic_consume(self.reply_queue, self._on_reply, auto_ack=True)
        self.inbox = []
        self.last_seq = 0
        self.batches = 0

    def _on_reply(self, ch, method, props, body):
        reply = self.pb.Reply()
        reply.ParseFromString(body)
        self.replies[props.correlation_id] = reply

    def request(self, auth=True, **body):
        if auth is True:
            auth = self.pb.Auth(client_id=self.id, secret=self.secret)
        return self.request_raw(self.pb.Request(auth=auth or None, **body))

    def request_raw(self, req, reply_to=None):
        corr = str(uuid.uuid4())
        self.ch.basic_publish(
            exchange=f"{self.ns}.requests",
            routing_key=f"{self.ns}.server",
            body=req.SerializeToString(),
            properties=pika.BasicProperties(
                reply_to=reply_to or self.reply_queue,
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
        self.consume_inbox()

    def consume_inbox(self):
        """Consumes the inbox, then says so with `join` (docs: Receiving
        messages): from its reply on, list_clients shows this client online."""
        self.ch.basic_qos(prefetch_count=256)
        self.ch.basic_consume(f"{self.ns}.client.{self.id}", self._on_message, exclusive=True)
        self.send_join()

    def send_join(self):
        reply = self.request(join=self.pb.JoinRequest(client_id=self.id))
        assert reply.WhichOneof("body") == "join", reply

    def _on_message(self, ch, method, props, body):
        # One ChatMessage, or several in a ChatMessageBatch: decode by type.
        if props.type == "chat.v1.ChatMessageBatch":
            batch = self.pb.ChatMessageBatch()
            batch.ParseFromString(body)
            messages = list(batch.messages)
            self.batches += 1
        else:
            m = self.pb.ChatMessage()
            m.ParseFromString(body)
            messages = [m]
        for m in messages:
            if m.seq > self.last_seq:  # the seq rule: drop repeats
                self.last_seq = m.seq
                self.inbox.append(m)
        ch.basic_ack(method.delivery_tag)  # after the last one is handled

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

            def one_send(to, text):
                return pb.SendRequest(id=str(uuid.uuid4()), to=to, text=text, **{"from": py_id})
            reply = py.request(send_batch=pb.SendBatchRequest(sends=[
                one_send("rusty", "batched one"), one_send("nobody-here", "lost?"),
                one_send("rusty", "batched two")]))
            outcomes = reply.send_batch.outcomes if reply.WhichOneof("body") == "send_batch" else []
            check([o.WhichOneof("result") for o in outcomes] == ["accepted", "error", "accepted"]
                  and outcomes[1].error.code == pb.ErrorCode.Value("NOT_FOUND"),
                  "a send_batch has one outcome per send, in order")

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
            check_reply_to_refused(pb, NS, None)
            check_per_client(pb, env, tmp, procs)
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
            cleanup(NS, ["rusty"] + sorted(JOINED))
            cleanup(NS2, ["rusty2"] + sorted(JOINED2))
            delete_users(NS2, ["rusty2"] + sorted(JOINED2))


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
    """A history larger than one reply comes in pages (after / more)."""
    big = PyClient(pb, "big-" + uuid.uuid4().hex[:6])
    big.join()
    sent = [f"{i:02} " + "y" * 100 for i in range(40)]
    for text in sent:
        assert big.send(py.id, text).WhichOneof("body") == "send"
    got, pages, sizes = [], 0, []
    while True:
        reply = big.request(history=pb.HistoryRequest(client_id=big.id, after=len(got)))
        assert reply.WhichOneof("body") == "history", reply
        pages += 1
        sizes.append(reply.history.ByteSize())
        got += [m.text for m in reply.history.messages]
        if not reply.history.more:
            break
        assert reply.history.messages, "a page that says more is never empty"
    check(got == sent and pages > 1 and max(sizes) <= MAX_REPLY_BYTES,
          f"a history over the reply limit comes in {pages} pages of at most "
          f"{MAX_REPLY_BYTES} bytes, all of it in order")
    reply = big.request(history=pb.HistoryRequest(client_id=big.id, after=3, limit=2))
    check([m.text for m in reply.history.messages] == sent[3:5] and reply.history.more,
          "after and limit select a page")
    big.close()


def check_coming_back(pb, py):
    """After a lost connection: no register needed, nothing lost or repeated."""
    last = py.last_seq
    py.close()
    sender = PyClient(pb, "back-" + uuid.uuid4().hex[:6])
    sender.join()
    sender.send(py.id, "while you were away")
    wait_listed(sender, py.id, False)
    check(True, "a client whose connection closed is listed offline")
    back = PyClient(pb, py.id, secret=py.secret)
    reply = back.request(join=pb.JoinRequest(client_id=py.id))
    check(reply.WhichOneof("body") == "error"
          and reply.error.code == pb.ErrorCode.Value("INVALID_ARGUMENT"),
          f"join before consuming the inbox is refused: {reply.error.message!r}")
    back.last_seq = last  # the seq rule: what it had shown before
    back.consume_inbox()
    check(listed(sender, py.id), "consuming again and joining lists it online at once")
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


def listed(asker, client_id):
    """Whether list_clients, asked by `asker`, shows `client_id` online."""
    reply = asker.request(list_clients=asker.pb.ListClientsRequest())
    return {c.id: c.online for c in reply.list_clients.clients}.get(client_id, False)


def wait_listed(asker, client_id, online):
    """Waits until list_clients shows `client_id` with `online` (going
    offline reaches the server through the broker's events: eventually)."""
    deadline = time.time() + WAIT
    while listed(asker, client_id) != online:
        if time.time() > deadline:
            raise AssertionError(f"{client_id} never listed with online={online}")
        time.sleep(0.1)


def check_reply_to_refused(pb, ns, login, victim="rusty"):
    """docs: a reply_to that is not a server-named queue is not answered,
    not carried out, and dead-lettered."""
    sender = PyClient(pb, "rt-" + uuid.uuid4().hex[:6], ns=ns, login=login)
    if login is None:
        sender.join()
    else:
        sender.id, sender.secret = login[0].rsplit(".", 1)[-1], login[1]
    admin = pika.BlockingConnection(pika.URLParameters(URL))
    ach = admin.channel()
    before = ach.queue_declare(f"{ns}.dead", passive=True).method.message_count
    req = pb.Request(auth=pb.Auth(client_id=sender.id, secret=sender.secret),
                     send=pb.SendRequest(id=str(uuid.uuid4()), to=victim, text="into an inbox?",
                                         **{"from": sender.id}))
    sender.ch.basic_publish(
        exchange=f"{ns}.requests", routing_key=f"{ns}.server", body=req.SerializeToString(),
        properties=pika.BasicProperties(reply_to=f"{ns}.client.{victim}", correlation_id="x",
                                        delivery_mode=2, type="chat.v1.Request"),
        mandatory=True)
    deadline = time.time() + WAIT
    while ach.queue_declare(f"{ns}.dead", passive=True).method.message_count <= before:
        if time.time() > deadline:
            raise AssertionError("a request with reply_to = an inbox was not dead-lettered")
        time.sleep(0.2)
    sent = sender.request(history=pb.HistoryRequest(client_id=sender.id)).history.messages
    check(all(m.text != "into an inbox?" for m in sent),
          f"[{ns}] a reply_to naming an inbox is refused: not carried out, dead-lettered")
    admin.close()
    sender.close()


def mgmt(method, path, body=None):
    """One call of the RabbitMQ management HTTP API (MGMT's account)."""
    u = urllib.parse.urlsplit(MGMT)
    req = urllib.request.Request(
        f"http://{u.hostname}:{u.port or 80}{u.path.rstrip('/')}/api/{path}", method=method,
        data=None if body is None else json.dumps(body).encode())
    auth = f"{urllib.parse.unquote(u.username or '')}:{urllib.parse.unquote(u.password or '')}"
    req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as r:
        data = r.read()
    return json.loads(data) if data else None


JOINED2 = set()  # client IDs of the per-client part, for the cleanup


def refused(what, action):
    """`action` must fail with ACCESS_REFUSED (403) from the broker."""
    try:
        action()
    except pika.exceptions.ChannelClosedByBroker as e:
        check(e.reply_code == 403, f"{what}: refused ({e.reply_code})")
        return
    raise AssertionError(f"{what}: the broker allowed it")


def check_per_client(pb, env, tmp, procs):
    """docs: Broker accounts. A Python client with its own broker user."""
    try:
        mgmt("GET", "whoami")
    except (urllib.error.URLError, OSError) as e:
        raise AssertionError(
            f"the per-client part needs the RabbitMQ management API at CHAT_AMQP_MANAGEMENT_URL "
            f"({urllib.parse.urlsplit(MGMT).hostname}): {e}; enable it with "
            "`rabbitmq-plugins enable rabbitmq_management`")
    env2 = dict(env, CHAT_AMQP_NAMESPACE=NS2, CHAT_AMQP_BROKER_AUTH="per-client",
                CHAT_AMQP_MANAGEMENT_URL=MGMT, XDG_STATE_HOME=os.path.join(tmp, "state2"))
    procs.append(subprocess.Popen(
        [BIN / "amqp-server", "--data-dir", os.path.join(tmp, "data2")], env=env2))
    deadline = time.time() + WAIT
    while subprocess.run([BIN / "amqp-server", "health"], env=env2,
                         capture_output=True).returncode != 0:
        if time.time() > deadline:
            raise AssertionError("amqp-server --broker-auth per-client did not come up")
        time.sleep(0.2)

    me = "pc-" + uuid.uuid4().hex[:6]
    secret = secrets.token_hex(32)
    own = (f"{NS2}.client.{me}", secret)
    try:
        PyClient(pb, me, secret, ns=NS2, login=own)
        raise AssertionError("a login as a user the server never created was accepted")
    except pika.exceptions.AMQPConnectionError:
        check(True, "[per-client] before registering, the own broker login is refused")
    boot = PyClient(pb, me, secret, ns=NS2, login=(f"{NS2}.register", REGISTER_PASSWORD))
    reply = boot.request(register=pb.RegisterRequest(client_id=me))
    check(reply.WhichOneof("body") == "register" and reply.register.created,
          "[per-client] register through the bootstrap user <ns>.register")
    JOINED2.add(me)
    refused("[per-client] the bootstrap user consuming the inbox",
            lambda: boot.conn.channel().basic_consume(f"{NS2}.client.{me}", lambda *a: None))
    boot.close()

    py = PyClient(pb, me, secret, ns=NS2, login=own)
    py.consume_inbox()
    check(listed(py, me), "[per-client] logged in again as its own user, consumes its inbox, joined")

    listener = subprocess.Popen(
        [BIN / "amqp-client", "--id", "rusty2", "--json", "listen",
         "--count", "1", "--timeout", str(int(WAIT))],
        env=env2, stdout=subprocess.PIPE, text=True)
    procs.append(listener)
    deadline = time.time() + WAIT
    while True:
        reply = py.request(list_clients=pb.ListClientsRequest())
        if {c.id: c.online for c in reply.list_clients.clients}.get("rusty2"):
            break
        if time.time() > deadline:
            raise AssertionError("rusty2 (amqp-client --broker-auth per-client) never came online")
        time.sleep(0.2)
    reply = py.send("rusty2", "hello with per-client users")
    check(reply.WhichOneof("body") == "send", "[per-client] python -> rust send accepted")
    out, _ = listener.communicate(timeout=WAIT)
    got = [json.loads(line) for line in out.splitlines() if line.strip()]
    check(any(e.get("text") == "hello with per-client users" for e in got),
          "[per-client] the Rust client (its own broker user) received it")
    subprocess.run([BIN / "amqp-client", "--id", "rusty2", "send", me, "hello back"],
                   env=env2, check=True, timeout=WAIT, stdout=subprocess.DEVNULL)
    [m] = py.wait_messages(1)
    check(m.text == "hello back", "[per-client] rust -> python received")
    reply = py.request(history=pb.HistoryRequest(client_id=me))
    check([h.text for h in reply.history.messages] == ["hello with per-client users"],
          "[per-client] history")

    refused("[per-client] consuming another client's inbox",
            lambda: py.conn.channel().basic_consume(f"{NS2}.client.rusty2", lambda *a: None))
    refused("[per-client] purging another client's inbox",
            lambda: py.conn.channel().queue_purge(f"{NS2}.client.rusty2"))

    def publish_default():
        ch = py.conn.channel()
        ch.confirm_delivery()
        ch.basic_publish("", f"{NS2}.client.rusty2", b"forged")
    refused("[per-client] publishing to the default exchange", publish_default)

    def publish_deliver():
        ch = py.conn.channel()
        ch.confirm_delivery()
        ch.basic_publish(f"{NS2}.deliver", "rusty2", b"forged")
    refused("[per-client] publishing to <ns>.deliver", publish_deliver)
    py.close()
    check_reply_to_refused(pb, NS2, own, victim="rusty2")


def delete_users(ns, clients):
    """Per-client part: the users the server created (docs: Broker accounts)."""
    for user in [f"{ns}.register"] + [f"{ns}.client.{c}" for c in clients]:
        try:
            mgmt("DELETE", "users/" + urllib.parse.quote(user, safe=""))
        except urllib.error.HTTPError as e:
            if e.code != 404:
                print(f"cannot delete broker user {user}: {e}", file=sys.stderr)
        except (urllib.error.URLError, OSError):
            return


def cleanup(ns, clients):
    conn = pika.BlockingConnection(pika.URLParameters(URL))
    ch = conn.channel()
    for q in [f"{ns}.server", f"{ns}.dead"] + [f"{ns}.client.{c}" for c in clients]:
        ch.queue_delete(q)
    for x in [f"{ns}.deliver", f"{ns}.requests"]:
        ch.exchange_delete(x)
    conn.close()


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAIL {e}", file=sys.stderr)
        sys.exit(1)
