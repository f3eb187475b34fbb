"""How many fdatasync calls per second this disk serves when N threads
append a line and fdatasync the same file at once, and how long each call
takes. Usage: python3 fsync_threads.py N [FILE] (FILE defaults to
./fsync-test.txt, removed afterwards)."""
import os, sys, threading, time

n = int(sys.argv[1])
path = sys.argv[2] if len(sys.argv) > 2 else "fsync-test.txt"
dur = 3.0
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC)
counts = [0] * n
lat = []
lock = threading.Lock()


def run(i):
    end = time.time() + dur
    while time.time() < end:
        os.write(fd, b"x" * 200 + b"\n")
        t = time.perf_counter()
        os.fdatasync(fd)
        d = time.perf_counter() - t
        counts[i] += 1
        with lock:
            lat.append(d)


threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
for t in threads:
    t.start()
for t in threads:
    t.join()
os.close(fd)
os.remove(path)
lat.sort()
print(f"{n} threads: {sum(counts) / dur:.0f} fdatasync/s, median {lat[len(lat) // 2] * 1000:.2f} ms, "
      f"p90 {lat[int(len(lat) * 0.9)] * 1000:.2f} ms")
