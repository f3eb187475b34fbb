"""Summarise before/after loadgen runs: one directory per run (NAME-k),
median over repeats of each variant NAME. Usage: ab_table.py DIR..."""
import csv, sys, os, statistics
from collections import defaultdict
rows = defaultdict(list)
for d in sys.argv[1:]:
    variant = os.path.basename(d.rstrip('/')).rsplit('-', 1)[0]
    for r in csv.DictReader(open(os.path.join(d, 'runs.csv'))):
        dur = 'fsync' if 'fsync' in r['server_settings'] else 'os'
        load = r['window'] or ('r' + r['offered_rate'].split('.')[0])  # window, or open-loop rate
        key = (r['experiment'], r['stack'], int(r['clients']), load, dur, variant)
        rows[key].append(r)
def med(rs, col):
    v = [float(r[col]) for r in rs if r[col] not in ('', 'nan')]
    return statistics.median(v) if v else float('nan')
print(f"{'sweep':14} {'stack':10} {'cl':>4} {'load':>6} {'dur':5} {'variant':8} {'n':>2} {'msg/s':>8} {'ratio':>6} {'p50ms':>7} {'p99ms':>8} lost dup err")
for k in sorted(rows):
    rs = rows[k]
    print(f"{k[0]:14} {k[1]:10} {k[2]:>4} {k[3]:>6} {k[4]:5} {k[5]:8} {len(rs):>2} {med(rs,'delivery_rate'):8.0f} {med(rs,'ceiling_ratio'):6.2f} {med(rs,'e2e_p50_us')/1000:7.2f} {med(rs,'e2e_p99_us')/1000:8.2f} "
          f"{sum(int(r['lost'] or 0) for r in rs)} {sum(int(r['duplicates'] or 0) for r in rs)} {sum(int(r['errors'] or 0) for r in rs)}")
