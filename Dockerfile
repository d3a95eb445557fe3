# cacertd's container image: a release build, then a minimal runtime with no shell and no
# package manager, running as the unprivileged uid 65532.
#   docker build -t cacertd:0.1.0 .
# deploy/kubernetes/management/base runs it with `-c /etc/cacertd/cacertd.toml serve`.

FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin cacertd \
    && install -D -m 0755 target/release/cacertd /out/cacertd

# glibc and libgcc, CA certificates, /etc/passwd with the nonroot user; nothing else.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/cacertd /usr/local/bin/cacertd
COPY policies /etc/cacertd/policies
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/cacertd"]
CMD ["--help"]
