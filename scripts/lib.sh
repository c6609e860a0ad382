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
    # smartctl: the agent reads the host's disks' SMART / NVMe health with it.
    need smartctl=smartmontools
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

# The web console's browser libraries, from npm at pinned versions (never copied into the
# repository): xterm.js for serial consoles, noVNC for graphical ones.
WEB_ASSETS_PACKAGES=(@xterm/xterm@5.5.0 @xterm/addon-fit@0.10.0 @novnc/novnc@1.7.0)

# ensure_web_assets: those packages in a fixed prefix, installed if missing; prints the
# node_modules directory (what NEREID_WEB_ASSETS / --web-assets names) on the last line.
ensure_web_assets() {
    need node=nodejs npm=npm
    local tag prefix lock=
    tag=$(printf '%s\n' "${WEB_ASSETS_PACKAGES[@]}" | sha256sum | cut -c1-12)
    prefix="${NEREID_CACHE:-$HOME/.cache/nereid}/web-assets-$tag"
    local done="$prefix/.installed"
    if [ ! -e "$done" ]; then
        mkdir -p "$prefix"
        exec {lock}>"$prefix/.install.lock"
        if command -v flock >/dev/null; then flock "$lock"; fi
    fi
    if [ ! -e "$done" ]; then
        log "installing ${WEB_ASSETS_PACKAGES[*]} (npm) into $prefix"
        npm install --prefix "$prefix" --save-exact --no-audit --no-fund --no-update-notifier --loglevel=error "${WEB_ASSETS_PACKAGES[@]}" >&2 \
            || die "npm install ${WEB_ASSETS_PACKAGES[*]} failed"
        [ -f "$prefix/node_modules/@xterm/xterm/lib/xterm.js" ] && [ -f "$prefix/node_modules/@novnc/novnc/core/rfb.js" ] \
            || die "the console's browser libraries are not where expected under $prefix/node_modules"
        touch "$done"
    fi
    [ -z "$lock" ] || exec {lock}>&-
    echo "$prefix/node_modules"
}

# ensure_chromium: Debian's headless Chromium and its WebDriver, for the console's browser tests.
ensure_chromium() {
    need chromium=chromium chromedriver=chromium-driver
}

# NEXTEST_VERSION: the cargo-nextest release scripts/test runs the suite with (its
# `.config/nextest.toml` is what boots QEMU guests one at a time).
NEXTEST_VERSION=0.9.143

# ensure_nextest: `cargo nextest` at $NEXTEST_VERSION: the one on the PATH if it is that
# version, else built from crates.io into a fixed prefix (once; cached) and put first on
# the PATH. Needs cargo (ensure_rust).
ensure_nextest() {
    local want="cargo-nextest $NEXTEST_VERSION"
    local root="${NEREID_CACHE:-$HOME/.cache/nereid}/cargo-nextest-$NEXTEST_VERSION" lock=
    nextest_is() { [ "$(cargo nextest --version 2>/dev/null | head -n1 | cut -d' ' -f1-2)" = "$want" ]; }
    nextest_is && return 0
    export PATH="$root/bin:$PATH"
    if ! nextest_is; then
        mkdir -p "$root"
        # Two runs at once on one machine: one cargo install at a time, then re-check.
        exec {lock}>"$root/.install.lock"
        if command -v flock >/dev/null; then flock "$lock"; fi
    fi
    if ! nextest_is; then
        log "installing cargo-nextest@$NEXTEST_VERSION (crates.io, built from source once) into $root"
        cargo install --locked --quiet --root "$root" "cargo-nextest@$NEXTEST_VERSION" \
            || die "cargo install cargo-nextest@$NEXTEST_VERSION failed"
        nextest_is || die "cargo nextest --version does not print '$want' after installing it into $root"
    fi
    [ -z "$lock" ] || exec {lock}>&-
}

# path_without CMD DIR: prints $PATH with CMD hidden: each directory that holds CMD is
# replaced by a new directory (under DIR) of links to everything else in it.
path_without() {
    local cmd=$1 tmp=$2 out= dir f shadow n=0
    local IFS=:
    for dir in $PATH; do
        if [ -n "$dir" ] && [ -e "$dir/$cmd" ]; then
            n=$((n + 1))
            shadow="$tmp/path-$n"
            mkdir -p "$shadow"
            for f in "$dir"/*; do
                [ "${f##*/}" = "$cmd" ] || ln -sfn "$f" "$shadow/${f##*/}"
            done
            dir=$shadow
        fi
        out=${out:+$out:}$dir
    done
    printf '%s\n' "$out"
}

# install_nereid BIN: links `nereid` to BIN where a new shell finds it, so the commands
# `nereid up` prints run as printed: ~/.local/bin if that is on the PATH, else
# /usr/local/bin (with sudo if need be), else ~/.local/bin with a warning to add it to
# the PATH. Idempotent; says what it did.
install_nereid() {
    local bin dir found
    bin=$(realpath "$1")
    case ":$PATH:" in
        *":$HOME/.local/bin:"*) dir=$HOME/.local/bin ;;
        *) dir=/usr/local/bin ;;
    esac
    if [ "$(readlink "$dir/nereid" 2>/dev/null)" != "$bin" ]; then
        if [ "$dir" = /usr/local/bin ] && [ ! -w "$dir" ]; then
            if command -v sudo >/dev/null && sudo mkdir -p "$dir" && sudo ln -sfn "$bin" "$dir/nereid"; then
                :
            else
                dir=$HOME/.local/bin
            fi
        fi
        if [ "$(readlink "$dir/nereid" 2>/dev/null)" != "$bin" ]; then
            mkdir -p "$dir"
            ln -sfn "$bin" "$dir/nereid"
        fi
    fi
    hash -r
    found=$(command -v nereid || true)
    if [ "$found" = "$dir/nereid" ]; then
        log "installed nereid as $dir/nereid (a link to $bin)"
    elif [ -z "$found" ]; then
        log "warning: $dir is not on your PATH: add it (e.g. echo 'export PATH=\"$dir:\$PATH\"' >> ~/.profile) to run the commands below as printed"
    elif [ "$(realpath "$found")" != "$bin" ]; then
        log "warning: \`nereid\` on your PATH is $found, which comes before $dir: remove it to run the commands below as printed"
    fi
}
