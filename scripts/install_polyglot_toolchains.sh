#!/bin/sh
# Installs the Debian (bookworm) packages the Go, C++ and Java clients are generated and built with:
# everything comes from apt, nothing from the Go module proxy or Maven Central, so an offline CI builds too.
#   scripts/install_polyglot_toolchains.sh [go] [cpp] [java]   (no argument: all three)
# Installs only what is missing; as non-root it prints the apt-get command and fails instead.
set -eu

GO_PKGS="golang-go protobuf-compiler protoc-gen-go protoc-gen-go-grpc golang-google-protobuf-dev
golang-google-grpc-dev golang-google-genproto-dev golang-github-golang-protobuf-1-5-dev"
CPP_PKGS="g++ make pkg-config protobuf-compiler protobuf-compiler-grpc libgrpc++-dev libprotobuf-dev"
JAVA_PKGS="default-jdk-headless make protobuf-compiler protobuf-compiler-grpc-java-plugin libprotobuf-java
libgrpc-java libgoogle-common-protos-java libnetty-java libgoogle-gson-java libperfmark-java"

[ $# -eq 0 ] && set -- go cpp java
wanted=""
for lang in "$@"; do
    case "$lang" in
        go) wanted="$wanted $GO_PKGS" ;;
        cpp) wanted="$wanted $CPP_PKGS" ;;
        java) wanted="$wanted $JAVA_PKGS" ;;
        *) echo "unknown language: $lang (go, cpp, java)" >&2; exit 2 ;;
    esac
done

missing=""
for pkg in $wanted; do
    case " $missing " in *" $pkg "*) continue ;; esac
    if [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" != "install ok installed" ]; then
        missing="$missing $pkg"
    fi
done
[ -z "$missing" ] && exit 0

cmd="apt-get install -y --no-install-recommends$missing"
if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages; run: sudo apt-get update && sudo $cmd" >&2
    exit 1
fi
echo "installing:$missing" >&2
apt-get update -qq
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive $cmd >/dev/null
