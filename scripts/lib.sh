# Shared helpers for scripts/up and scripts/test. Sourced, not run.
# Installs only what is missing, idempotently, on Debian/Ubuntu.

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root (or sudo) to run: $*"; fi
}

# apt_install PKG...: installs the Debian packages that are not installed yet.
apt_install() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null || die "apt-get not found: install ${missing[*]} by hand (Nereid's scripts target Debian/Ubuntu)"
    log "installing ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# need CMD=PKG...: installs PKG for each CMD that is not on the PATH.
need() {
    local pkgs=()
    for pair in "$@"; do
        command -v "${pair%%=*}" >/dev/null || pkgs+=("${pair#*=}")
    done
    [ ${#pkgs[@]} -eq 0 ] || apt_install "${pkgs[@]}"
}

# ensure_rust: cargo from rustup, installed if absent.
ensure_rust() {
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
    command -v cargo >/dev/null && return 0
    apt_install curl ca-certificates
    log "installing the Rust toolchain (rustup)"
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt >/dev/null
    export PATH="$HOME/.cargo/bin:$PATH"
}

# Commands building Nereid needs, and the packages that bring them.
BUILD_NEEDS=(cc=gcc pkg-config=pkg-config)

# ensure_qemu: what the qemu backend runs VMs with: QEMU, qemu-img and UEFI firmware.
ensure_qemu() {
    # iproute2 and nftables: the agent's bridges, taps and anti-spoofing filters.
    apt_install qemu-system-x86 ovmf iproute2 nftables
    # Installing qemu-system-x86 may replace a newer qemu-utils: check qemu-img after it.
    need qemu-img=qemu-utils
}

# test_image: builds (or finds, cached) the bootable test image; prints its path.
test_image() {
    if [ "$(id -u)" -eq 0 ]; then bash scripts/build-test-image | tail -n1; else as_root bash scripts/build-test-image | tail -n1; fi
}

# TRITON_VERSION: the npm `triton` CLI release Nereid's CloudAPI is checked against.
TRITON_VERSION=7.17.0

# ensure_triton: Node.js, npm, ssh-keygen and the npm `triton` CLI ($TRITON_VERSION) in a fixed
# prefix, installed if missing; prints the path of the triton binary on the last line.
ensure_triton() {
    need node=nodejs npm=npm ssh-keygen=openssh-client
    local prefix="${NEREID_CACHE:-$HOME/.cache/nereid}/triton-$TRITON_VERSION"
    local bin="$prefix/node_modules/.bin/triton" lock=
    if [ "$("$bin" --version 2>/dev/null | head -n1)" != "Triton CLI $TRITON_VERSION" ]; then
        mkdir -p "$prefix"
        # Tests running in parallel may all install at once: one npm at a time, then re-check.
        exec {lock}>"$prefix/.install.lock"
        if command -v flock >/dev/null; then flock "$lock"; fi
    fi
    if [ "$("$bin" --version 2>/dev/null | head -n1)" != "Triton CLI $TRITON_VERSION" ]; then
        log "installing triton@$TRITON_VERSION (npm) into $prefix"
        npm install --prefix "$prefix" --save-exact --no-audit --no-fund --no-update-notifier --loglevel=error "triton@$TRITON_VERSION" >&2 \
            || die "npm install triton@$TRITON_VERSION failed"
        [ "$("$bin" --version 2>/dev/null | head -n1)" = "Triton CLI $TRITON_VERSION" ] \
            || die "$bin --version does not print 'Triton CLI $TRITON_VERSION' after installing"
    fi
    [ -z "$lock" ] || exec {lock}>&-
    echo "$bin"
}
