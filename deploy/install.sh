#!/usr/bin/env bash
# Install fedavg on this machine as systemd services: a system user, a virtual
# environment under /opt/fedavg, the units, and example settings under /etc/fedavg.
# Run it again to upgrade: settings you edited are never overwritten.
#
#   sudo deploy/install.sh                       # install from this checkout
#   sudo deploy/install.sh --role server --orchestrator http://orch.lan:11999
#   sudo FEDAVG_NODE_TOKEN=... deploy/install.sh --role node --orchestrator http://orch.lan:11999
#   sudo deploy/install.sh --uninstall [--purge] # remove it
#   DESTDIR=/tmp/stage deploy/install.sh --no-pip  # stage into a directory; touch nothing
#
# See --help for every option.
set -euo pipefail

readonly SERVICE_USER=fedavg        # the units name it: User=fedavg
readonly STATE_DIR=/var/lib/fedavg  # the units' StateDirectory=fedavg
readonly CACHE_DIR=/var/cache/fedavg
readonly CONF_DIR=/etc/fedavg
readonly UNIT_DIR=/etc/systemd/system
readonly UNITS=(fedavg-server.service fedavg-node@.service fedavg-showcase.service)
readonly ENV_FILES=(server.env node.env showcase.env)
readonly SCRIPTS=(fedavg-server fedavg-node fedavg-showcase)
readonly MARKER=.fedavg-install
readonly CPU_TORCH_INDEX=https://download.pytorch.org/whl/cpu
readonly MIN_PYTHON_MINOR=11 # Python 3.11

SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly SRC_DIR
readonly DEPLOY_DIR="$SRC_DIR/deploy"

PREFIX=/opt/fedavg
DESTDIR=${DESTDIR:-}
PYTHON=${PYTHON:-python3}
EXTRAS=""
WHEEL_DIR=""
TORCH_INDEX=auto
TORCH_REASON=""
ROLE=""
ORCHESTRATOR=""
SKIP_PIP=${FEDAVG_INSTALL_SKIP_PIP:-0}
NO_DEPS=0
SYSTEM_SITE=0
ACTION=install
PURGE=0

usage() {
    cat <<EOF
Usage: $0 [options]

Installs fedavg as systemd services. Without DESTDIR it must run as root.

Options:
  --prefix DIR         where the venv goes (default /opt/fedavg; the units are rendered
                       with it). Must not be under /home, /root or /tmp: the services'
                       sandbox hides those.
  --destdir DIR        stage every file under DIR instead of / (also: DESTDIR=DIR). Nothing
                       outside DIR is touched: no user is created, systemctl is not run;
                       the script prints what it would do instead.
  --python PY          interpreter for the venv (default python3; 3.11 or newer)
  --extras LIST        optional extras to install, e.g. offline-mnist (the MNIST subset
                       for machines without internet)
  --wheel-from DIR     install offline from a wheel directory (pip --no-index --find-links
                       DIR); build one elsewhere with: pip wheel -w DIR /path/to/fedavg
  --torch-index URL    install torch and torchvision from this index first, e.g.
                       https://download.pytorch.org/whl/cu126. Default (auto): a machine
                       with no NVIDIA GPU (no nvidia-smi, no /dev/nvidia0) gets the
                       CPU-only build from $CPU_TORCH_INDEX, a tenth of the
                       download; one with a GPU gets PyPI's CUDA build. 'pypi': PyPI's
                       build whatever the machine has.
  --role server|node   write what this machine's role needs into $CONF_DIR (a variable
                       already set there is kept):
                       server: FEDAVG_HOST=0.0.0.0, FEDAVG_NODE_TOKEN and
                         FEDAVG_ADMIN_TOKEN (from the environment, else generated), and
                         FEDAVG_ALLOWED_HOSTS when --orchestrator names a host name;
                       node: ORCHESTRATOR_URL (--orchestrator, required) and
                         FEDAVG_NODE_TOKEN from the environment (the server's join token)
  --orchestrator URL   the orchestrator as the nodes reach it, e.g. http://orch.lan:11999
                       (several, comma-separated: failover)
  --system-site-packages
                       let the venv see the system's packages (e.g. a distro's torch)
  --no-deps            install only the fedavg package; its dependencies must already be
                       importable (with --system-site-packages or --wheel-from)
  --no-pip             create the venv but install nothing into it (also
                       FEDAVG_INSTALL_SKIP_PIP=1); for tests and for installing yourself
  --uninstall          stop and remove the units and the venv; keep settings, data and
                       the user
  --purge              with --uninstall: also remove $CONF_DIR, $STATE_DIR,
                       $CACHE_DIR and the user
  -h, --help           this text
EOF
}

die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }
say() { printf '==> %s\n' "$*"; }
warn() { printf 'install.sh: warning: %s\n' "$*" >&2; }

# In a staged install, print a command that touches the machine instead of running it.
run_or_show() {
    if [[ -n $DESTDIR ]]; then
        printf '    (staged, not run) %s\n' "$*"
    else
        "$@"
    fi
}

need_value() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value"; }

parse_args() {
    while [[ $# -gt 0 ]]; do
        case $1 in
            --prefix=* | --destdir=* | --python=* | --extras=* | --wheel-from=* | \
                --torch-index=* | --role=* | --orchestrator=*)
                local opt=${1%%=*} value=${1#*=}
                shift
                set -- "$opt" "$value" "$@"
                continue
                ;;
            --prefix) need_value "$@"; PREFIX=$2; shift ;;
            --destdir) need_value "$@"; DESTDIR=$2; shift ;;
            --python) need_value "$@"; PYTHON=$2; shift ;;
            --extras) need_value "$@"; EXTRAS=$2; shift ;;
            --wheel-from) need_value "$@"; WHEEL_DIR=$2; shift ;;
            --torch-index) need_value "$@"; TORCH_INDEX=$2; shift ;;
            --role) need_value "$@"; ROLE=$2; shift ;;
            --orchestrator) need_value "$@"; ORCHESTRATOR=$2; shift ;;
            --system-site-packages) SYSTEM_SITE=1 ;;
            --no-deps) NO_DEPS=1 ;;
            --no-pip) SKIP_PIP=1 ;;
            --uninstall) ACTION=uninstall ;;
            --purge) PURGE=1 ;;
            -h | --help) usage; exit 0 ;;
            *) usage >&2; die "unknown option: $1" ;;
        esac
        shift
    done
}

check_args() {
    PREFIX=${PREFIX%/}
    # The prefix is pasted into the units with sed and removed on uninstall: keep it plain.
    [[ $PREFIX =~ ^/[A-Za-z0-9._+-]+(/[A-Za-z0-9._+-]+)+$ ]] ||
        die "--prefix must be an absolute path of two or more plain components (like /opt/fedavg), not '$PREFIX'"
    case $PREFIX/ in
        /home/* | /root/* | /tmp/* | /var/tmp/* | /run/*)
            warn "$PREFIX is hidden from the services (ProtectHome=, PrivateTmp=): they will not start" ;;
    esac
    if [[ -n $DESTDIR ]]; then
        DESTDIR=${DESTDIR%/}
        [[ $DESTDIR == /* ]] || die "DESTDIR must be an absolute path, not '$DESTDIR'"
    fi
    [[ $SKIP_PIP == 0 || $SKIP_PIP == 1 ]] || die "FEDAVG_INSTALL_SKIP_PIP must be 0 or 1"
    [[ -z $WHEEL_DIR || -d $WHEEL_DIR ]] || die "--wheel-from: no directory $WHEEL_DIR"
    [[ $PURGE == 0 || $ACTION == uninstall ]] || die "--purge goes with --uninstall"
    check_role
    if [[ -z $DESTDIR && $(id -u) != 0 ]]; then
        die "run as root (sudo $0), or stage into a directory with --destdir DIR"
    fi
}

check_role() {
    case $ROLE in
        "" | server) ;;
        node) [[ -n $ORCHESTRATOR ]] ||
            die "--role node needs --orchestrator URL (where this node reaches the orchestrator, like http://orch.lan:11999)" ;;
        *) die "--role must be server or node, not '$ROLE'" ;;
    esac
    [[ -z $ORCHESTRATOR || -n $ROLE ]] || die "--orchestrator goes with --role server|node"
    # Both end up in an env file: plain URLs and tokens, nothing a shell or systemd reads.
    local url_re='^https?://[][A-Za-z0-9._~%@:-]+(/[A-Za-z0-9._~%/-]*)?$' url urls=()
    IFS=, read -ra urls <<<"$ORCHESTRATOR"
    for url in "${urls[@]}"; do
        [[ $url =~ $url_re ]] || die "--orchestrator: '$url' is not a URL like http://orch.lan:11999"
    done
    local token_re='^[A-Za-z0-9._~+/=-]+$' name
    for name in FEDAVG_NODE_TOKEN FEDAVG_ADMIN_TOKEN; do
        [[ -z ${!name:-} || ${!name} =~ $token_re ]] ||
            die "$name from the environment may hold only letters, digits and ._~+/=-"
    done
}

# Ubuntu 22.04 ships Python 3.10: say so before anything is written, with the ways out.
check_python() {
    local found
    found=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) ||
        die "no Python at '$PYTHON' (choose one with --python)"
    if [[ $found =~ ^3\.([0-9]+)$ ]] && ((BASH_REMATCH[1] >= MIN_PYTHON_MINOR)); then
        return
    fi
    cat >&2 <<EOF
install.sh: error: $PYTHON is Python $found; fedavg needs 3.$MIN_PYTHON_MINOR or newer (Ubuntu 22.04 ships 3.10).
Install a newer one where the services can read it (not under /home or /root), then run
this again with --python:
  Ubuntu, deadsnakes PPA:  sudo add-apt-repository ppa:deadsnakes/ppa
                           sudo apt-get install python3.12 python3.12-venv
                           sudo $0 --python python3.12 ...
  any Linux, with uv:      sudo UV_PYTHON_INSTALL_DIR=/opt/python uv python install 3.12
                           sudo $0 --python /opt/python/cpython-3.12*/bin/python3.12 ...
EOF
    exit 1
}

has_nvidia_gpu() { command -v nvidia-smi >/dev/null 2>&1 || [[ -e /dev/nvidia0 ]]; }

# TORCH_INDEX becomes the index torch comes from (empty: PyPI), TORCH_REASON says why.
choose_torch_index() {
    if [[ $NO_DEPS == 1 ]] || [[ -n $WHEEL_DIR && $TORCH_INDEX == auto ]]; then
        TORCH_INDEX="" # no dependencies, or offline from wheels: no index to ask
        return
    fi
    case $TORCH_INDEX in
        auto)
            if has_nvidia_gpu; then
                TORCH_INDEX=""
                TORCH_REASON="an NVIDIA GPU is here: PyTorch's CUDA build from PyPI"
            else
                TORCH_INDEX=$CPU_TORCH_INDEX
                TORCH_REASON="no NVIDIA GPU here (no nvidia-smi, no /dev/nvidia0): CPU-only PyTorch from $CPU_TORCH_INDEX (--torch-index pypi for the CUDA build)"
            fi ;;
        pypi) TORCH_INDEX=""; TORCH_REASON="PyTorch from PyPI (--torch-index pypi)" ;;
        *) TORCH_REASON="PyTorch from $TORCH_INDEX (--torch-index)" ;;
    esac
}

# set_env_value FILE NAME VALUE [SECRET]: uncomment-and-set NAME in an env file (its
# documented "#NAME=default" line, else a new line at the end); a NAME already set is kept.
set_env_value() {
    local file=$1 name=$2 value=$3 secret=${4:-} shown=$3 edited
    [[ -z $secret ]] || shown="(secret)"
    if grep -q "^$name=" "$file"; then
        say "kept $name from your ${file#"$DESTDIR"}"
        return
    fi
    edited=$(mktemp)
    awk -v name="$name" -v value="$value" '
        !done && index($0, "#" name "=") == 1 { print name "=" value; done = 1; next }
        { print }
        END { if (!done) print name "=" value }' "$file" >"$edited"
    cat "$edited" >"$file" # in place: the file keeps its mode and group
    rm -f "$edited"
    say "set $name=$shown in ${file#"$DESTDIR"}"
}

new_token() { "$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(32))'; }

# The host of the first URL, when it is a name the server must be told to answer to.
orchestrator_host_name() {
    local host=${ORCHESTRATOR%%,*}
    host=${host#*://}
    host=${host%%/*}
    host=${host%:*}
    [[ $host =~ ^[0-9.]+$ || $host == \[* || $host == localhost ]] || printf '%s\n' "$host"
}

apply_role() {
    local conf=$DESTDIR$CONF_DIR host
    case $ROLE in
        server)
            set_env_value "$conf/server.env" FEDAVG_HOST 0.0.0.0
            set_env_value "$conf/server.env" FEDAVG_NODE_TOKEN "${FEDAVG_NODE_TOKEN:-$(new_token)}" secret
            set_env_value "$conf/server.env" FEDAVG_ADMIN_TOKEN "${FEDAVG_ADMIN_TOKEN:-$(new_token)}" secret
            host=$(orchestrator_host_name)
            if [[ -n $host ]]; then
                set_env_value "$conf/server.env" FEDAVG_ALLOWED_HOSTS "$host"
            fi ;;
        node)
            set_env_value "$conf/node.env" ORCHESTRATOR_URL "$ORCHESTRATOR"
            if [[ -n ${FEDAVG_NODE_TOKEN:-} ]]; then
                set_env_value "$conf/node.env" FEDAVG_NODE_TOKEN "$FEDAVG_NODE_TOKEN" secret
            elif ! grep -q '^FEDAVG_NODE_TOKEN=' "$conf/node.env"; then
                warn "no FEDAVG_NODE_TOKEN given: set the server's join token in $CONF_DIR/node.env"
            fi ;;
    esac
}

systemd_running() { [[ -z $DESTDIR && -d /run/systemd/system ]]; }

nologin_shell() {
    local shell
    for shell in /usr/sbin/nologin /sbin/nologin /bin/false; do
        [[ -x $shell ]] && { printf '%s\n' "$shell"; return; }
    done
    printf '/bin/false\n'
}

ensure_user() {
    if [[ -n $DESTDIR ]]; then
        say "system user $SERVICE_USER (home $STATE_DIR, no login): would be created if missing"
        return
    fi
    if getent passwd "$SERVICE_USER" >/dev/null; then
        say "system user $SERVICE_USER exists"
        return
    fi
    say "creating system user $SERVICE_USER"
    useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
        --shell "$(nologin_shell)" --comment "fedavg federated learning" "$SERVICE_USER"
}

ensure_venv() {
    local venv=$1 args=()
    if [[ $SYSTEM_SITE == 1 ]]; then
        args+=(--system-site-packages)
    fi
    if [[ $SKIP_PIP == 1 ]]; then
        [[ -x $venv/bin/python ]] && { say "venv $venv exists"; return; }
        args+=(--without-pip)
    elif "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
        say "venv $venv exists"
        return
    fi
    say "creating venv $venv"
    "$PYTHON" -m venv "${args[@]}" "$venv" ||
        die "could not create a venv with $PYTHON (Debian/Ubuntu: apt-get install python3-venv)"
}

pip_install() {
    local venv=$1 extras="" pip
    pip=("$venv/bin/python" -m pip install --disable-pip-version-check --no-input --upgrade)
    if [[ $NO_DEPS == 1 ]]; then
        pip+=(--no-deps)
    fi
    if [[ -n $EXTRAS ]]; then
        extras="[$EXTRAS]"
    fi
    if [[ -n $TORCH_REASON ]]; then
        say "$TORCH_REASON"
    fi
    if [[ -n $TORCH_INDEX ]]; then
        say "installing torch and torchvision from $TORCH_INDEX"
        "${pip[@]}" --index-url "$TORCH_INDEX" torch torchvision
    fi
    if [[ -n $WHEEL_DIR ]]; then
        say "installing fedavg$extras from wheels in $WHEEL_DIR (offline)"
        "${pip[@]}" --no-index --find-links "$WHEEL_DIR" "fedavg$extras"
    else
        say "installing fedavg$extras from $SRC_DIR (PyTorch is large: this takes minutes)"
        "${pip[@]}" "$SRC_DIR$extras"
    fi
    local script
    for script in "${SCRIPTS[@]}"; do
        [[ -x $venv/bin/$script ]] || die "pip did not install $venv/bin/$script"
    done
}

# install_file SRC DEST MODE: copy and report whether it changed.
install_file() {
    local src=$1 dest=$2 mode=$3
    if [[ -f $dest ]] && cmp -s "$src" "$dest"; then
        chmod "$mode" "$dest"
        say "unchanged $dest"
    else
        install -D -m "$mode" "$src" "$dest"
        say "wrote $dest"
    fi
}

install_units() {
    local unit rendered
    rendered=$(mktemp -d)
    for unit in "${UNITS[@]}"; do
        sed "s#/opt/fedavg#$PREFIX#g" "$DEPLOY_DIR/systemd/$unit" >"$rendered/$unit"
        install_file "$rendered/$unit" "$DESTDIR$UNIT_DIR/$unit" 0644
    done
    rm -rf "$rendered"
}

install_settings() {
    local root=$1 name dest
    for name in "${ENV_FILES[@]}"; do
        install_file "$DEPLOY_DIR/env/$name" "$root/share/env/$name" 0644
    done
    install -d -m 0750 "$DESTDIR$CONF_DIR"
    run_or_show chgrp "$SERVICE_USER" "$CONF_DIR"
    for name in "${ENV_FILES[@]}"; do
        dest=$DESTDIR$CONF_DIR/$name
        if [[ -e $dest ]]; then
            say "kept your $CONF_DIR/$name (the new template is $PREFIX/share/env/$name)"
            continue
        fi
        install -m 0640 "$DEPLOY_DIR/env/$name" "$dest"
        run_or_show chgrp "$SERVICE_USER" "$CONF_DIR/$name"
        say "wrote $dest"
    done
}

do_install() {
    local root=$DESTDIR$PREFIX
    if [[ -n $DESTDIR ]]; then
        say "staging under $DESTDIR: nothing outside it is touched"
    fi
    ensure_user
    install -d -m 0755 "$root"
    ensure_venv "$root/venv"
    choose_torch_index
    if [[ $SKIP_PIP == 1 ]]; then
        say "skipping pip (--no-pip): install fedavg into $PREFIX/venv yourself"
        if [[ -n $TORCH_REASON ]]; then
            say "  (torch first: $TORCH_REASON)"
        fi
    else
        pip_install "$root/venv"
    fi
    install_file "$DEPLOY_DIR/README.md" "$root/share/doc/DEPLOY.md" 0644
    install_settings "$root"
    apply_role
    install_units
    printf 'installed-from=%s\n' "$SRC_DIR" >"$root/${MARKER:?}"
    if systemd_running; then
        systemctl daemon-reload
    elif [[ -n $DESTDIR ]]; then
        run_or_show systemctl daemon-reload
    else
        warn "systemd is not running here: run 'systemctl daemon-reload' once it is"
    fi
    next_steps
}

next_steps() {
    cat <<EOF

fedavg is installed in $PREFIX. Next steps:

 1. Settings (every one is documented in the file):
      orchestrator: $CONF_DIR/server.env    nodes: $CONF_DIR/node.env
      showcase:     $CONF_DIR/showcase.env
    Several machines: on the orchestrator set FEDAVG_HOST=0.0.0.0, FEDAVG_ADMIN_TOKEN and
    FEDAVG_NODE_TOKEN (and FEDAVG_ALLOWED_HOSTS=<orchestrator> if that is a name, not an
    address); on every node set ORCHESTRATOR_URL=http://<orchestrator>:11999 and
    the same FEDAVG_NODE_TOKEN. Make a token with:
      python3 -c 'import secrets; print(secrets.token_urlsafe(32))'
    Or let --role write them: --role server on the orchestrator, then on each worker
      sudo FEDAVG_NODE_TOKEN=<the server's, from: sudo grep ^FEDAVG_NODE_TOKEN= $CONF_DIR/server.env> \\
          $0 --role node --orchestrator http://<orchestrator>:11999

 2. Start what this machine runs:
      orchestrator: systemctl enable --now fedavg-server
      a node:       systemctl enable --now fedavg-node@\$(hostname -s)
                    (one per GPU: fedavg-node@gpu0, fedavg-node@gpu1 with
                     CUDA_VISIBLE_DEVICES in $CONF_DIR/node-gpu0.env, ...)
      showcase:     systemctl enable --now fedavg-showcase

 3. Open ports: 11999/tcp on the orchestrator (nodes and dashboard),
    7860/tcp where the showcase runs (only if it listens beyond 127.0.0.1).

 4. Watch and train:
      journalctl -fu fedavg-server -o cat          # JSON lines
      curl -X POST -H "Authorization: Bearer \$ADMIN_TOKEN" http://<orchestrator>:11999/datasets/prepare-mnist
      curl -X POST -H "Authorization: Bearer \$ADMIN_TOKEN" "http://<orchestrator>:11999/train/mnist?epochs=5"
      dashboard: http://<orchestrator>:11999/

 Remove: $0 --uninstall (keeps settings and data; add --purge to drop them too)
EOF
}

do_uninstall() {
    local root=$DESTDIR$PREFIX unit link name
    if [[ -n $DESTDIR ]]; then
        say "staged uninstall under $DESTDIR"
    fi
    # Enabled instances (fedavg-node@gpu0.service, ...) are links in *.wants/ directories.
    for link in "$DESTDIR$UNIT_DIR"/*.wants/fedavg-*.service; do
        [[ -L $link ]] || continue
        name=${link##*/}
        if systemd_running; then
            systemctl disable --now "$name" || warn "could not disable $name"
        fi
        rm -f "$link"
        say "disabled $name"
    done
    if systemd_running; then
        systemctl stop fedavg-server.service fedavg-showcase.service 'fedavg-node@*.service' ||
            warn "could not stop every fedavg unit"
    fi
    for unit in "${UNITS[@]}"; do
        if [[ -e $DESTDIR$UNIT_DIR/$unit ]]; then
            rm -f "$DESTDIR$UNIT_DIR/$unit"
            say "removed $UNIT_DIR/$unit"
        fi
    done
    if [[ -f $root/$MARKER ]]; then
        # Only what this script created: a prefix like /usr/local keeps everything else.
        rm -rf "${root:?}/venv" "$root/share/env" "$root/share/doc/DEPLOY.md" "$root/${MARKER:?}"
        rmdir "$root/share/doc" "$root/share" "$root" 2>/dev/null || true
        say "removed $PREFIX/venv"
    elif [[ -e $root/venv ]]; then
        warn "$PREFIX/venv was not installed by this script ($MARKER is missing): left alone"
    fi
    if [[ $PURGE == 1 ]]; then
        rm -rf "$DESTDIR$CONF_DIR" "$DESTDIR$STATE_DIR" "$DESTDIR$CACHE_DIR"
        say "removed $CONF_DIR, $STATE_DIR and $CACHE_DIR"
        if [[ -n $DESTDIR ]]; then
            run_or_show userdel "$SERVICE_USER"
        elif getent passwd "$SERVICE_USER" >/dev/null; then
            userdel "$SERVICE_USER"
            say "removed user $SERVICE_USER"
        fi
    else
        say "kept $CONF_DIR (settings), $STATE_DIR (data) and user $SERVICE_USER; --purge removes them"
    fi
    if systemd_running; then
        systemctl daemon-reload
    fi
}

main() {
    parse_args "$@"
    check_args
    case $ACTION in
        install) check_python && do_install ;;
        uninstall) do_uninstall ;;
    esac
}

main "$@"
