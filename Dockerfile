# Images of the operator and of storage-node, from one build stage, under the names the
# manifests and a StorageCluster's default image use (the tag is the workspace version):
#   docker build --target operator     -t ghcr.io/mend-dev/operator:0.1.0 .
#   docker build --target storage-node -t ghcr.io/mend-dev/storage-node:0.1.0 .
# Not exercised on the project's machines (no container engine there); see README.

# Build: the whole workspace's lockfile, release binaries. protox compiles the protobufs, so no
# system protoc is needed.
FROM rust:1.90-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p operator -p storage-node

# Runtime images: glibc and CA certificates, no shell, non-root user 65532 (the UID the
# manifests and the member pods run as).
FROM gcr.io/distroless/cc-debian12:nonroot AS operator
COPY --from=build /src/target/release/operator /usr/local/bin/operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/operator"]
CMD ["run"]

FROM gcr.io/distroless/cc-debian12:nonroot AS storage-node
COPY --from=build /src/target/release/storage-node /usr/local/bin/storage-node
USER 65532:65532
EXPOSE 2379 2380 2381
# The operator's member pods set the command (`storage-node` with etcd's flags).
ENTRYPOINT ["/usr/local/bin/storage-node"]
