# One image with every binary of the workspace (grpc-server, grpc-client,
# amqp-server, amqp-client, and whatever members are added later); the compose
# file picks the role of each container with `entrypoint`/`command`.
#
# Why this shape:
# - Dependencies are compiled in their own layer, from a skeleton of the
#   workspace (manifests, Cargo.lock, stub targets). That layer is rebuilt only
#   when a manifest or Cargo.lock changes; editing a source file recompiles the
#   workspace crates alone.
# - It works with the classic builder (docker-compose v1's default) and with
#   BuildKit: no cache mounts, no heredocs, no `# syntax=` line.
# - Few steps in the rust stage: with the vfs storage driver every layer is a
#   full copy of the image (~0.9 GB).

# ---- skeleton: the workspace reduced to what decides the dependency graph ---
# Found generically (every Cargo.toml in the tree), so new members need no edit
# here. This stage reruns on every source change, but it yields the same files
# and the COPY --from below stays cached (build caches hash content, not mtime).
FROM debian:bookworm-slim AS skeleton
COPY . /src
RUN set -eu; cd /src; mkdir -p /skeleton; \
    stub() { \
      mkdir -p "/skeleton/$(dirname "$1")"; \
      case "$1" in */lib.rs) : > "/skeleton/$1" ;; *) echo 'fn main() {}' > "/skeleton/$1" ;; esac; \
    }; \
    cp Cargo.lock /skeleton/; \
    for extra in .cargo rust-toolchain rust-toolchain.toml; do \
      if [ -e "$extra" ]; then cp -r "$extra" /skeleton/; fi; \
    done; \
    for manifest in $(find . -path ./target -prune -o -name Cargo.toml -print); do \
      dir=$(dirname "$manifest"); \
      mkdir -p "/skeleton/$dir"; cp "$manifest" "/skeleton/$manifest"; \
      for f in "$dir/build.rs" "$dir/src/lib.rs" "$dir/src/main.rs" "$dir"/src/bin/*.rs "$dir"/src/bin/*/main.rs; do \
        if [ -f "$f" ]; then stub "$f"; fi; \
      done; \
      for kind in bench:benches test:tests example:examples; do \
        if grep -q "^\[\[${kind%%:*}\]\]" "$manifest"; then \
          for f in "$dir/${kind#*:}"/*.rs "$dir/${kind#*:}"/*/main.rs; do \
            if [ -f "$f" ]; then stub "$f"; fi; \
          done; \
        fi; \
      done; \
      for f in $(sed -n 's/^[[:space:]]*\(path\|build\)[[:space:]]*=[[:space:]]*"\([^"]*\.rs\)".*/\2/p' "$manifest"); do \
        if [ ! -f "/skeleton/$dir/$f" ]; then stub "$dir/$f"; fi; \
      done; \
    done; \
    find /skeleton -type f | sort

# ---- build -----------------------------------------------------------------
FROM rust:1-slim-bookworm AS build
COPY --from=skeleton /skeleton/ /src/
# Dependencies only (the workspace crates are stubs here).
RUN cd /src && cargo build --release --locked --workspace
COPY . /src/
# The real sources may be older than the stubs' build: touch them so that cargo
# rebuilds every workspace crate. Then keep the binaries, drop target/ (it only
# bloats this layer).
RUN set -eu; cd /src; \
    find . -path ./target -prune -o -type f -exec touch {} +; \
    cargo build --release --locked --workspace; \
    mkdir /out; \
    find target/release -maxdepth 1 -type f -executable -exec cp {} /out/ \; ; \
    ls -l /out; \
    rm -rf target

# ---- runtime ---------------------------------------------------------------
# The binaries need only glibc and libgcc (no TLS: lapin is built without it
# and tonic without it), so no extra packages.
FROM debian:bookworm-slim
RUN useradd --uid 10001 --user-group --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin chat \
    && mkdir -p /data /state && chown chat:chat /data /state
COPY --from=build /out/ /usr/local/bin/
USER chat
WORKDIR /data
# Servers keep log.txt and state.journal here; mount a volume on /data.
ENV CHAT_DATA_DIR=/data
# Clients keep their secret and last shown seq under /state/chatbench/;
# mount a volume on /state so an ID stays yours across containers.
ENV XDG_STATE_HOME=/state
EXPOSE 50051
CMD ["grpc-server"]
