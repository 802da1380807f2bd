# Builds the host and every function, then ships them on a slim image.
FROM rust:1.95-bookworm AS build
RUN rustup target add wasm32-wasip2
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p runnel \
 && mkdir -p /out/functions \
 && for dir in functions/*/; do \
      name=$(basename "$dir"); \
      cargo build --locked -p "$name" --target wasm32-wasip2 --profile wasm \
      && cp "target/wasm32-wasip2/wasm/$(echo "$name" | tr - _).wasm" "/out/functions/$name.wasm" \
      && cp "$dir/runnel.toml" "/out/functions/$name.toml"; \
    done \
 && cp target/release/runnel /out/runnel

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/runnel /usr/local/bin/runnel
COPY --from=build /out/functions /opt/runnel/functions
ENV RUNNEL_HTTP_ADDR=0.0.0.0:8080 \
    RUNNEL_FUNCTIONS_DIR=/opt/runnel/functions
EXPOSE 8080
USER nobody
ENTRYPOINT ["/usr/local/bin/runnel"]
