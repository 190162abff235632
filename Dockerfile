# nurture-server image: multi-stage, non-root, ONNX Runtime where the server
# looks for it. Build from the repository root:
#   docker build -t nurture/nurture-server:0.1.0 .

# ONNX Runtime comes from the onnxruntime wheel on PyPI, as in scripts/fetch-ort.sh.
FROM python:3.11-slim-bookworm AS ort
RUN pip download --no-deps --only-binary=:all: --dest /wheel onnxruntime==1.31.1 \
 && python -c "import glob, zipfile; zipfile.ZipFile(glob.glob('/wheel/onnxruntime-1.31.1-*.whl')[0]).extract('onnxruntime/capi/libonnxruntime.so.1.31.1', '/ort')" \
 && echo "fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3  /ort/onnxruntime/capi/libonnxruntime.so.1.31.1" | sha256sum -c -

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p nurture-server -p nurture-models -p nurture-trainer

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin nurture \
 && mkdir -p /var/cache/nurture && chown nurture:nurture /var/cache/nurture
COPY --from=ort /ort/onnxruntime/capi/libonnxruntime.so.1.31.1 /opt/nurture/lib/libonnxruntime.so.1.31.1
COPY --from=build /src/target/release/nurture-server /src/target/release/nurturectl /src/target/release/nurture-trainer /usr/local/bin/
ENV ORT_DYLIB_PATH=/opt/nurture/lib/libonnxruntime.so.1.31.1 \
    NURTURE_LOG=info,ort=warn
USER 10001:10001
EXPOSE 50051 9090 9091
ENTRYPOINT ["/usr/local/bin/nurture-server"]
CMD ["--listen=0.0.0.0:50051", "--metrics-listen=0.0.0.0:9090", "--health-listen=0.0.0.0:9091", "--cache-dir=/var/cache/nurture"]
