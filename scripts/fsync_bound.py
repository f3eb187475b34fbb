"""Compare `--durability fsync` with `os` in closed-loop runs against the
bound Little's law puts on it.

Usage: fsync_bound.py DIR...   (each DIR holds a runs.csv with an `os` and
an `fsync` row per (clients, window), e.g. from experiments/fsync-window.toml)

With W messages in flight per client and C clients, a closed loop's mean
latency is L = C*W / throughput. `fsync` cannot answer or deliver a message
before the journal flush that carries it ends, so it adds at least one
flush f (mean `server_append_mean_us` of the fsync row) to every message,
and about 1.5 f when a message also waits for the flush in progress. With
nothing else added, fsync/os would be L_os / (L_os + f), or
L_os / (L_os + 1.5 f): the two bounds printed beside the measured ratio.
"""
import csv
import os
import statistics
import sys
from collections import defaultdict

pairs = defaultdict(dict)
for d in sys.argv[1:]:
    for r in csv.DictReader(open(os.path.join(d, 'runs.csv'))):
        dur = 'fsync' if 'fsync' in r['server_settings'] else 'os'
        pairs[(d, int(r['clients']), int(r['window']))][dur] = r

by_point = defaultdict(list)
print(f"{'run':12} {'cl':>3} {'w':>4} {'os msg/s':>9} {'fsync':>9} {'ratio':>5} "
      f"{'L_os ms':>7} {'L_fs ms':>7} {'flush ms':>8} {'batch':>6} {'bound f':>7} {'1.5f':>5}")
for (d, c, w), v in sorted(pairs.items()):
    if 'os' not in v or 'fsync' not in v:
        continue
    t_os, t_fs = float(v['os']['delivery_rate']), float(v['fsync']['delivery_rate'])
    l_os, l_fs = c * w / t_os * 1e3, c * w / t_fs * 1e3
    f = float(v['fsync']['server_append_mean_us']) / 1e3
    b1, b15 = l_os / (l_os + f), l_os / (l_os + 1.5 * f)
    batch = float(v['fsync']['server_journal_batch_mean'])
    print(f"{os.path.basename(d.rstrip('/')):12} {c:>3} {w:>4} {t_os:9.0f} {t_fs:9.0f} {t_fs / t_os:5.2f} "
          f"{l_os:7.2f} {l_fs:7.2f} {f:8.3f} {batch:6.1f} {b1:7.2f} {b15:5.2f}")
    by_point[(c, w)].append((t_fs / t_os, b1, b15, l_fs - l_os, f))

print("\nmedians per point: fsync/os, bound (f), bound (1.5 f), latency added by fsync (ms), flush (ms)")
for (c, w), v in sorted(by_point.items()):
    m = [statistics.median(x[i] for x in v) for i in range(5)]
    print(f"{c:>3} clients, window {w:>4}: {m[0]:.2f}  {m[1]:.2f}  {m[2]:.2f}  +{m[3]:.2f}  {m[4]:.3f}")
