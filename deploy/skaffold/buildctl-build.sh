#!/bin/sh
# skaffold's `custom` builder for a cluster with BuildKit and no Docker daemon
# (`skaffold run -p buildkit --default-repo=REGISTRY`, see skaffold.yaml): builds the
# Dockerfile's `runtime` target with buildctl against buildkitd at $BUILDKIT_HOST and
# outputs the image skaffold names in $IMAGE, pushed to its registry when $PUSH_IMAGE is
# true (the buildkit profile always pushes: skaffold reads the pushed image's digest).
#
# Set by skaffold: IMAGE, PUSH_IMAGE, BUILD_CONTEXT (the artifact's directory), PLATFORMS.
# Set by you:
#   BUILDKIT_HOST  buildkitd's address, as buildctl takes it: unix:///run/buildkit/buildkitd.sock,
#                  tcp://buildkitd.buildkit.svc:1234, kube-pod://buildkitd-0?namespace=buildkit ...
#   BUILDCTL_OPTS  more `buildctl build` options, split at whitespace (so none may hold a
#                  space), e.g. a base image from a mirror,
#                  `--opt=build-arg:PYTHON_IMAGE=mirror.example/python:3.12-slim-bookworm`,
#                  or `--export-cache=type=registry,ref=REGISTRY/threadkeeper:cache`.
#   BUILDCTL       the buildctl command (default: buildctl on PATH).
# Bad settings end it with one line on stderr and exit 2, before anything is built.
set -eu

fail() {
    echo "buildctl-build.sh: $*" >&2
    exit 2
}

[ -n "${IMAGE:-}" ] || fail "IMAGE is not set: this script is skaffold's custom builder (skaffold run -p buildkit)"
[ -n "${BUILDKIT_HOST:-}" ] || fail "BUILDKIT_HOST is not set: name buildkitd's address, e.g. unix:///run/buildkit/buildkitd.sock"
case "${PUSH_IMAGE:-false}" in
    true | false) push=${PUSH_IMAGE:-false} ;;
    *) fail "PUSH_IMAGE is '${PUSH_IMAGE}', not true or false" ;;
esac
context=${BUILD_CONTEXT:-.}
[ -f "$context/Dockerfile" ] || fail "no Dockerfile in the build context '$context'"

set -- --addr "$BUILDKIT_HOST" build --progress=plain \
    --frontend=dockerfile.v0 \
    --local "context=$context" \
    --local "dockerfile=$context" \
    --opt target=runtime \
    --output "type=image,name=$IMAGE,push=$push"
if [ -n "${PLATFORMS:-}" ]; then
    set -- "$@" --opt "platform=$PLATFORMS"
fi
# BUILDCTL_OPTS is a list of options: split on purpose.
# shellcheck disable=SC2086
exec "${BUILDCTL:-buildctl}" "$@" ${BUILDCTL_OPTS:-}
