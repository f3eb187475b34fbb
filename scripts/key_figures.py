#!/usr/bin/env python3
"""Prints the table of INFORME.md 4.12 (key figures, gRPC against AMQP)
from a loadgen runs.csv (default results/runs.csv), with the run_id of each
figure. The latest row of each point wins, as in the charts.

    python3 scripts/key_figures.py [results/runs.csv]
"""
import csv
import sys


def fmt(x):
    """A number the Spanish way: thin groups of three, decimal comma."""
    if x < 10 and x != int(x):
        return f"{x:.1f}".replace(".", ",")
    n = int(round(x))
    s = f"{n:,}".replace(",", " ")
    return s if n >= 10000 else str(n)


def ratio(a, b):
    if b == 0:
        return ""
    r = a / b
    return f"{r:.1f}".replace(".", ",") if r >= 1 else "1 / " + f"{1 / r:.1f}".replace(".", ",")


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "results/runs.csv"
    rows = list(csv.DictReader(open(path)))

    def find(stack, experiment, **want):
        hits = [r for r in rows if r["stack"] == stack and r["experiment"] == experiment
                and all(str(r[k]) == str(v) for k, v in want.items())]
        if not hits:
            raise SystemExit(f"no row for {stack} {experiment} {want}")
        return hits[-1]

    def f(r, col):
        return float(r[col] or "nan")

    def sustained(stack):
        """Highest open-loop rate delivered at >= 95 % of the offered rate."""
        ok = [r for r in rows if r["stack"] == stack and r["experiment"] == "latency-vs-load"
              and f(r, "delivery_rate") >= 0.95 * f(r, "offered_rate") and r["lost"] == "0"]
        return max(ok, key=lambda r: f(r, "offered_rate"))

    out = ["| medida | gRPC | AMQP | gRPC / AMQP |", "|---|---:|---:|---:|"]

    def pair(label, g, a, col, scale=1.0, inverse=False, show_ratio=True):
        gv, av = f(g, col) / scale, f(a, col) / scale
        rr = ratio(gv, av) if show_ratio and not inverse else (ratio(gv, av) if show_ratio else "")
        out.append(f"| {label} | {fmt(gv)} | {fmt(av)} | {rr} |")

    ids = lambda g, a: f"(`{g['run_id']}` / `{a['run_id']}`)"
    g, a = find("grpc", "ping-pong"), find("amqp", "ping-pong")
    pair(f"ping-pong: caudal (msg/s) {ids(g, a)}", g, a, "delivery_rate")
    pair("ping-pong: latencia p50 (µs)", g, a, "e2e_p50_us")
    pair("ping-pong: latencia p99 (µs)", g, a, "e2e_p99_us")
    g, a = sustained("grpc"), sustained("amqp")
    pair(f"bucle abierto: mayor tasa sostenida (msg/s) {ids(g, a)}", g, a, "offered_rate")
    pair("bucle abierto, a esa tasa sostenida: latencia p50 (µs)", g, a, "e2e_p50_us", show_ratio=False)
    pair("bucle abierto, a esa tasa sostenida: latencia p99 (µs)", g, a, "e2e_p99_us", show_ratio=False)
    for rate in ("1000.0", "2000.0"):
        g = find("grpc", "latency-vs-load", offered_rate=rate)
        a = find("amqp", "latency-vs-load", offered_rate=rate)
        pair(f"bucle abierto a {int(float(rate))} msg/s: p99 (µs) {ids(g, a)}", g, a, "e2e_p99_us")
    g = find("grpc", "throughput-vs-clients", clients=10)
    a = find("amqp", "throughput-vs-clients", clients=10)
    gb = find("grpc-bare", "throughput-vs-clients", clients=10)
    ab = find("amqp-bare", "throughput-vs-clients", clients=10)
    pair(f"10 clientes, ventana 8: caudal (msg/s) {ids(g, a)}", g, a, "delivery_rate")
    pair("10 clientes, ventana 8: latencia p50 (µs)", g, a, "e2e_p50_us")
    pair(f"10 clientes, ventana 8: techo (msg/s) {ids(gb, ab)}", gb, ab, "delivery_rate", show_ratio=False)
    out.append(f"| 10 clientes, ventana 8: `ceiling_ratio` | {f(g, 'ceiling_ratio'):.2f} | {f(a, 'ceiling_ratio'):.2f} | |".replace(".", ","))
    pair("10 clientes, ventana 8: CPU servidor (% de un núcleo)", g, a, "server_cpu_pct", show_ratio=False)
    out.append(f"| 10 clientes, ventana 8: CPU broker (% de un núcleo) | — | {fmt(f(a, 'broker_cpu_pct'))} | |")
    pair("10 clientes, ventana 8: CPU loadgen (% de un núcleo)", g, a, "loadgen_cpu_pct", show_ratio=False)
    g = find("grpc", "throughput-vs-clients", clients=1000)
    a = find("amqp", "throughput-vs-clients", clients=1000)
    pair(f"1000 clientes, ventana 8: caudal (msg/s) {ids(g, a)}", g, a, "delivery_rate")
    g = find("grpc", "payload", payload_bytes=65536)
    a = find("amqp", "payload", payload_bytes=65536)
    pair(f"64 KiB: caudal (msg/s) {ids(g, a)}", g, a, "delivery_rate")
    g, a = find("grpc", "fan-in", clients=11), find("amqp", "fan-in", clients=11)
    pair(f"*fan-in* 11 → 1: caudal (msg/s) {ids(g, a)}", g, a, "delivery_rate")
    g, a = find("grpc", "durability-fsync"), find("amqp", "durability-fsync")
    pair(f"`fsync`: caudal (msg/s) {ids(g, a)}", g, a, "delivery_rate")
    for fault, label in (("kill-server", "`kill-server`: pico de latencia (ms) / reconexiones"),
                         ("cut-connections", "`cut-connections`: pico de latencia (ms)"),
                         ("freeze-clients", "`freeze-clients` (5 s): pico de latencia (ms) / reconexiones")):
        g = find("grpc", f"fault-{fault}")
        a = find("amqp", f"fault-{fault}")
        gv, av = fmt(f(g, "fault_max_e2e_us") / 1000), fmt(f(a, "fault_max_e2e_us") / 1000)
        if "reconexiones" in label:
            gv, av = f"{gv} / {g['reconnects']}", f"{av} / {a['reconnects']}"
        out.append(f"| {label} {ids(g, a)} | {gv} | {av} | |")
    a = find("amqp", "fault-restart-broker")
    out.append(f"| `restart-broker`: pico de latencia (ms) (`{a['run_id']}`) | — | {fmt(f(a, 'fault_max_e2e_us') / 1000)} | |")
    g = find("grpc", "throughput-vs-clients", clients=1000)
    a = find("amqp", "throughput-vs-clients", clients=1000)
    pair(f"memoria pico del servidor, barrido de clientes (MiB) {ids(g, a)}", g, a, "server_peak_rss_mb", show_ratio=False)
    broker = max(f(r, "broker_peak_rss_mb") for r in rows if r["stack"].startswith("amqp") and r["broker_peak_rss_mb"])
    out.append(f"| memoria pico del broker (MiB), toda la ejecución (pico desde su arranque, 3.12) | — | {fmt(broker)} | |")
    print("\n".join(out))
    bad = [(r["run_id"], r["lost"], r["duplicates"], r["errors"]) for r in rows
           if r["lost"] != "0" or r["duplicates"] != "0" or r["errors"] != "0"]
    print(f"\n{len(rows)} rows; rows with lost/duplicates/errors: {bad or 'none'}")
    revs = sorted({r["git_rev"] for r in rows})
    print(f"git_rev: {revs}; machine: {sorted({r['machine'] for r in rows})}")
    print(f"started_at: {min(r['started_at'] for r in rows)} .. {max(r['started_at'] for r in rows)}")


main()
