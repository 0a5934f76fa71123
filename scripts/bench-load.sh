#!/usr/bin/env bash
# Load benchmarks of issue 4 (docs/BENCHMARKS-load.md), all on loopback:
#   1. messages relayed/s and p50/p99 delivery latency, 100 concurrent E2E clients (pqc-loadtest);
#      then ("relay") the same with opaque payloads, no E2E crypto in the load generator;
#   2. the same load through mosquitto over TLS 1.3 with QoS 1 (examples/mqtt_bench.rs);
#      then ("pairs", not in the default steps) 1b and 2 one after the other ROUNDS times, with
#      each round's ratio and the medians: on a shared machine, the figure to compare;
#   3. server RSS with 5 000 idle logged-in QUIC connections;
#   4. a 100 MiB file through pqc-client send-file / recv vs a plain quinn transfer and the disk
#      writing and flushing the same bytes (dd), the bound of a relay that keeps what it acknowledges;
#   5. a room of ROOM members: server CPU per join and per message to all, relay latency;
#      then ("sparse") one sender, ROOM_SPARSE messages ROOM_PAUSE_MS apart;
#   6. ("floor") both loads through a relay that only forwards, over the same QUIC/TLS set-up
#      (examples/quic_floor.rs): what the transport alone costs here, to compare 1b with 2 and 5;
#      with "pairs" too, every round of 2b also runs it, beside ours and mosquitto.
# Release build. Every process started here is stopped on exit (trap); every
# step runs under `timeout`. Knobs (env): STEPS ROUNDS CLIENTS MESSAGES PAYLOAD WINDOW IDLE FILE_MIB FILE_ROUNDS
# ROOM ROOM_SENDERS ROOM_MESSAGES ROOM_PAYLOAD ROOM_COMMIT ROOM_GROUP_INFO (sizes in bytes of
# the MLS objects; defaults measured for OpenMLS X-Wing at 100 members by the pqc-rooms bench).
# WINDOW: messages a client may have unacknowledged (1, the default: each send waits for the
# previous one's Ack, so a commit's fdatasync is in every message's round trip; MQTT usually allows
# more, mosquitto's max_inflight_messages is 20 by default). mqtt_bench keeps the same window.
# SERVER_WRAP: a command the server runs under (it must exec the server, keeping its pid). A
# diagnostic only: SERVER_WRAP=eatmydata (Debian package eatmydata) makes every fsync a no-op, which
# says what the flush before each acknowledgement costs; such figures are not the relay's.
# Needs: mosquitto (installed with apt-get when missing), openssl, python3 (free ports).
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS=${CLIENTS:-100}
MESSAGES=${MESSAGES:-200}
PAYLOAD=${PAYLOAD:-256}
WINDOW=${WINDOW:-1}
IDLE=${IDLE:-5000}
FILE_MIB=${FILE_MIB:-100}
FILE_ROUNDS=${FILE_ROUNDS:-5}
ROOM=${ROOM:-100}
ROOM_SENDERS=${ROOM_SENDERS:-10}
ROOM_MESSAGES=${ROOM_MESSAGES:-100}
ROOM_PAYLOAD=${ROOM_PAYLOAD:-402}
ROOM_COMMIT=${ROOM_COMMIT:-49626}
ROOM_GROUP_INFO=${ROOM_GROUP_INFO:-146345}
ROOM_SPARSE=${ROOM_SPARSE:-30}
ROOM_PAUSE_MS=${ROOM_PAUSE_MS:-300}
ROUNDS=${ROUNDS:-5}
SERVER_WRAP=${SERVER_WRAP:-}
STEPS=${STEPS:-chat relay floor mqtt idle file room sparse}
step() { [[ " $STEPS " == *" $1 "* ]]; }

# The MQTT baseline needs mosquitto (the Debian package): installed when missing.
if { step mqtt || step pairs; } && ! command -v mosquitto >/dev/null 2>&1 && ! [ -x /usr/sbin/mosquitto ]; then
    echo "installing mosquitto (the MQTT baseline)"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto
fi
export PATH="$PATH:/usr/sbin"

WORK=$(mktemp -d /tmp/pqc-bench.XXXXXX)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    sleep 1
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "== build (release)"
timeout 1800 cargo build --release -q -p pqc-server -p pqc-client -p pqc-loadtest --bins --examples
TARGET=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
BIN=$TARGET/release

# Benchmark server config: the per-connection rate limit (default 100 req/s),
# the connection cap (default 1000), the connections per address waiting to
# log in (default 64) and the registrations per address and hour
# (default 20; every simulated user registers from 127.0.0.1) are raised or
# lifted so they do not cap the figures;
# max_attachment is raised because a 100 MiB file is 100 MiB + 16 B per 512 KiB
# chunk once encrypted, just over the default limit (100 MiB).
cat > "$WORK/server.toml" <<TOML
log_level = "warn"
[limits]
requests_per_second = 1000000
max_connections = 20000
max_pending_logins_per_address = 0
max_mailbox = 100000
max_attachment = 209715200
registrations_per_hour = 0
TOML

SERVER_PID=
start_server() { # $1 = data dir
    PORT=$(free_port); SPORT=$(free_port)
    $SERVER_WRAP "$BIN/pqc-server" --config "$WORK/server.toml" --data "$1" --listen "127.0.0.1:$PORT" \
        --status "127.0.0.1:$SPORT" > "$1.log" 2>&1 &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    for _ in $(seq 100); do
        grep -q fingerprint "$1.log" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "server did not start:"; cat "$1.log"; exit 1
}
stop_server() {
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    timeout 15 tail --pid="$SERVER_PID" -f /dev/null || kill -KILL "$SERVER_PID" 2>/dev/null || true
}
result() { grep '^RESULT' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }

if step chat; then
echo "== 1. pqc-server: $CLIENTS clients x $MESSAGES messages, $PAYLOAD B"
start_server "$WORK/chat"
timeout 300 "$BIN/pqc-loadtest" --server "127.0.0.1:$PORT" --clients "$CLIENTS" --messages "$MESSAGES" \
    --payload "$PAYLOAD" --window "$WINDOW" --server-pid "$SERVER_PID" --duration-limit 240 | tee "$WORK/chat.out"
curl -s "http://127.0.0.1:$SPORT/metrics" > "$WORK/chat.metrics" 2>/dev/null || true
stop_server
fi

run_relay() { # $1 = data dir and output name
    start_server "$WORK/$1"
    timeout 300 "$BIN/pqc-loadtest" --server "127.0.0.1:$PORT" --clients "$CLIENTS" --messages "$MESSAGES" \
        --payload "$PAYLOAD" --window "$WINDOW" --opaque --server-pid "$SERVER_PID" --duration-limit 240 | tee "$WORK/$1.out"
    stop_server
}

if step relay; then
echo "== 1b. pqc-server, opaque payloads: $CLIENTS clients x $MESSAGES messages, $PAYLOAD B"
run_relay relay
fi

MQ_PID=
start_mosquitto() {
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
    -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -keyout "$WORK/mq.key" -out "$WORK/mq.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > "$WORK/ext.cnf"
openssl x509 -req -in "$WORK/mq.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" -CAcreateserial -days 2 \
    -extfile "$WORK/ext.cnf" -out "$WORK/mq.pem" 2>/dev/null
MQ_PORT=$(free_port)
cat > "$WORK/mosquitto.conf" <<CONF
user $(id -un)
persistence false
log_dest file $WORK/mosquitto.log
listener $MQ_PORT 127.0.0.1
allow_anonymous true
cafile $WORK/ca.pem
certfile $WORK/mq.pem
keyfile $WORK/mq.key
tls_version tlsv1.3
max_queued_messages 100000
CONF
mosquitto -c "$WORK/mosquitto.conf" &
MQ_PID=$!
PIDS+=("$MQ_PID")
sleep 0.5
}
run_mqtt() { # $1 = output name
    timeout 300 "$BIN/examples/mqtt_bench" --port "$MQ_PORT" --ca "$WORK/ca.pem" --clients "$CLIENTS" \
        --messages "$MESSAGES" --payload "$PAYLOAD" --window "$WINDOW" --broker-pid "$MQ_PID" --duration-limit 240 | tee "$WORK/$1.out"
}

if step mqtt; then
echo "== 2. mosquitto (TLS 1.3, QoS 1): $CLIENTS clients x $MESSAGES messages, $PAYLOAD B"
start_mosquitto
run_mqtt mqtt
kill -TERM "$MQ_PID" 2>/dev/null || true
fi

# The bare QUIC relay (step "floor", and each round of "pairs" with it).
start_floor() {
"$BIN/examples/quic_floor" serve > "$WORK/floor.log" 2>&1 &
FLOOR_PID=$!
PIDS+=("$FLOOR_PID")
for _ in $(seq 100); do grep -q LISTEN "$WORK/floor.log" 2>/dev/null && break; sleep 0.1; done
FLOOR_PORT=$(sed -n 's/^LISTEN .*:\([0-9]*\)$/\1/p' "$WORK/floor.log")
}
run_floor_relay() { # $1 = output name
    timeout 300 "$BIN/examples/quic_floor" relay --port "$FLOOR_PORT" --server-pid "$FLOOR_PID" --clients "$CLIENTS" \
        --messages "$MESSAGES" --payload "$PAYLOAD" --window "$WINDOW" | tee "$WORK/$1.out"
}

# "pairs": pqc-server (opaque payloads) and mosquitto one after the other,
# ROUNDS times. On a shared machine whose speed changes from one minute to
# the next, the ratio within a round (seconds apart) says more than two
# single runs; the summary gives each round and the medians. With "floor"
# also in STEPS, each round runs the bare QUIC relay too, so every round
# also says how the transport alone compares with mosquitto.
if step pairs; then
echo "== 2b. pqc-server and mosquitto alternately, $ROUNDS rounds, window $WINDOW"
start_mosquitto
if step floor; then start_floor; fi
for r in $(seq "$ROUNDS"); do
    run_relay "pair$r-ours"
    run_mqtt "pair$r-mqtt"
    if step floor; then run_floor_relay "pair$r-floor"; fi
done
kill -TERM "$MQ_PID" 2>/dev/null || true
if step floor; then kill -TERM "$FLOOR_PID" 2>/dev/null || true; fi
fi

if step idle; then
echo "== 3. idle memory: $IDLE logged-in QUIC connections"
start_server "$WORK/idle"
timeout 600 "$BIN/pqc-loadtest" --server "127.0.0.1:$PORT" --idle "$IDLE" --server-pid "$SERVER_PID" \
    --setup-concurrency 64 --idle-hold 5 --duration-limit 540 | tee "$WORK/idle.out"
stop_server
fi

if step file; then
echo "== 4. file transfer: $FILE_MIB MiB, $FILE_ROUNDS rounds (plain quinn, send-file, recv in turn)"
start_server "$WORK/file"
export PQC_PASSPHRASE=bench-only-passphrase
RID=$RANDOM
head -c "$((FILE_MIB << 20))" /dev/urandom > "$WORK/payload.bin"
C="timeout 300 $BIN/pqc-client --server 127.0.0.1:$PORT"
$C --profile "$WORK/alice" register "alice$RID" > /dev/null
$C --profile "$WORK/bob" register "bob$RID" > /dev/null
now() { date +%s.%N; }
t0=$(now); $C --profile "$WORK/alice" whoami > /dev/null; t1=$(now)
OPEN_S=$(echo "$t1 - $t0" | bc -l)
# The host's speed drifts: each round measures the peer and ours minutes
# apart at most, and the medians are compared.
# Wall time of the whole command (process start, profile open, login, the
# transfer, the end-to-end announcement), and the transfer alone as the
# client reports it: send-file's "sent ...: N MiB in S s" line (upload start
# to acknowledged announcement), recv's "file downloaded" log line (download,
# decryption, check and fsync of the file).
# The disk's own time for the same bytes (written and flushed, as the
# server must before it acknowledges the upload's end): an upload cannot be
# faster than the slower of the network and the disk.
QUINN_ALL=(); DISK_ALL=(); SEND_ALL=(); RECV_ALL=(); SEND_X=(); RECV_X=()
for round in $(seq "$FILE_ROUNDS"); do
    timeout 150 "$BIN/examples/quinn_transfer" --bytes "$((FILE_MIB << 20))" > "$WORK/quinn.out"
    QUINN_ALL+=("$(result "$WORK/quinn.out" secs)")
    t0=$(now); dd if="$WORK/payload.bin" of="$WORK/disk.bin" bs=1M conv=fdatasync status=none; t1=$(now)
    DISK_ALL+=("$(echo "$t1 - $t0" | bc -l)"); rm -f "$WORK/disk.bin"
    t0=$(now); $C --profile "$WORK/alice" send-file "bob$RID" "$WORK/payload.bin" > "$WORK/send.out"; t1=$(now)
    SEND_ALL+=("$(echo "$t1 - $t0" | bc -l)")
    SEND_X+=("$(sed -n 's/.* in \([0-9.]*\) s (.*/\1/p' "$WORK/send.out")")
    rm -rf "$WORK/out"; mkdir -p "$WORK/out"
    t0=$(now); RUST_LOG=pqc_client=info $C --profile "$WORK/bob" recv --out "$WORK/out" > "$WORK/recv.out" 2> "$WORK/recv.err"; t1=$(now)
    RECV_ALL+=("$(echo "$t1 - $t0" | bc -l)")
    RECV_X+=("$(sed -n 's/.*file downloaded.* ms=\([0-9.]*\).*/\1/p; s/.* ms=\([0-9.]*\).*file downloaded.*/\1/p' "$WORK/recv.err" | head -1 | awk '{print $1 / 1000}')")
    cmp "$WORK/payload.bin" "$WORK/out/payload.bin"
    printf 'round %s: plain quinn %.3f s; disk %.3f s; send-file %.3f s (transfer %.3f s); recv %.3f s (transfer %.3f s)\n' "$round" \
        "${QUINN_ALL[-1]}" "${DISK_ALL[-1]}" "${SEND_ALL[-1]}" "${SEND_X[-1]}" "${RECV_ALL[-1]}" "${RECV_X[-1]}"
done
stop_server
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
QUINN_S=$(median "${QUINN_ALL[@]}"); SEND_S=$(median "${SEND_ALL[@]}"); RECV_S=$(median "${RECV_ALL[@]}")
SEND_XS=$(median "${SEND_X[@]}"); RECV_XS=$(median "${RECV_X[@]}")
mibs() { echo "scale=1; $FILE_MIB / $1" | bc -l; }
QUINN=$(mibs "$QUINN_S"); SEND_MIBS=$(mibs "$SEND_S"); RECV_MIBS=$(mibs "$RECV_S")
SEND_XMIBS=$(mibs "$SEND_XS"); RECV_XMIBS=$(mibs "$RECV_XS")
E2E_MIBS=$(mibs "$(echo "$SEND_S + $RECV_S" | bc -l)")
# Per-round ratios (quinn's time / ours, same minute), then their median:
# steadier than a ratio of medians when the host's speed drifts.
ratios() { local -n ours=$1; local i; for i in "${!ours[@]}"; do echo "100 * ${QUINN_ALL[$i]} / ${ours[$i]}" | bc -l; done; }
R_SEND=$(median $(ratios SEND_ALL)); R_RECV=$(median $(ratios RECV_ALL))
R_SEND_X=$(median $(ratios SEND_X)); R_RECV_X=$(median $(ratios RECV_X))
DISK_S=$(median "${DISK_ALL[@]}"); DISK=$(mibs "$DISK_S")
# The upload alone against its bound: the slower of plain quinn and the disk, same round.
R_SEND_B=$(median $(for i in "${!SEND_X[@]}"; do
    python3 -c "print(100 * max(${QUINN_ALL[$i]}, ${DISK_ALL[$i]}) / ${SEND_X[$i]})"; done))
fi

if step room; then
echo "== 5. room: $ROOM members, $ROOM_SENDERS senders x $ROOM_MESSAGES messages"
start_server "$WORK/room"
timeout 600 "$BIN/pqc-loadtest" --server "127.0.0.1:$PORT" --room "$ROOM" --senders "$ROOM_SENDERS" \
    --messages "$ROOM_MESSAGES" --payload "$ROOM_PAYLOAD" --commit-bytes "$ROOM_COMMIT" \
    --group-info-bytes "$ROOM_GROUP_INFO" --server-pid "$SERVER_PID" --duration-limit 540 | tee "$WORK/room.out"
stop_server
fi

if step sparse; then
echo "== 5b. sparse room: $ROOM members, 1 sender x $ROOM_SPARSE messages, ${ROOM_PAUSE_MS} ms apart"
start_server "$WORK/sparse"
timeout 600 "$BIN/pqc-loadtest" --server "127.0.0.1:$PORT" --room "$ROOM" --senders 1 --messages "$ROOM_SPARSE" \
    --pause-ms "$ROOM_PAUSE_MS" --payload "$ROOM_PAYLOAD" --commit-bytes "$ROOM_COMMIT" \
    --group-info-bytes "$ROOM_GROUP_INFO" --server-pid "$SERVER_PID" --duration-limit 540 | tee "$WORK/sparse.out"
stop_server
fi

if step floor; then
echo "== 6. bare QUIC relay (forwards only): $CLIENTS clients x $MESSAGES messages; room of $ROOM"
start_floor
run_floor_relay floor-relay
timeout 300 "$BIN/examples/quic_floor" fanout --port "$FLOOR_PORT" --server-pid "$FLOOR_PID" --clients "$ROOM" \
    --senders "$ROOM_SENDERS" --messages "$ROOM_MESSAGES" --payload "$ROOM_PAYLOAD" | tee "$WORK/floor-fanout.out"
kill -TERM "$FLOOR_PID" 2>/dev/null || true
fi

echo
echo "== summary ($(date -u +%FT%TZ), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))"
printf '%-58s %s\n' "figure" "value"
[ -z "$SERVER_WRAP" ] || printf '%-58s %s\n' "pqc-server ran under (diagnostic, not its own figures)" "$SERVER_WRAP"
if step chat; then
printf '%-58s %s\n' "pqc-server msgs relayed/s ($CLIENTS clients, ${PAYLOAD} B)" "$(result "$WORK/chat.out" msgs_per_s)"
printf '%-58s %s / %s ms\n' "pqc-server delivery latency p50 / p99" "$(result "$WORK/chat.out" p50_ms)" "$(result "$WORK/chat.out" p99_ms)"
printf '%-58s %s us\n' "pqc-server CPU per message (store, push, ack)" "$(result "$WORK/chat.out" cpu_per_msg_us)"
printf '%-58s %s us\n' "pqc-server: load generator CPU per message (E2E clients)" "$(result "$WORK/chat.out" gen_cpu_per_msg_us)"
fi
if step relay; then
printf '%-58s %s\n' "pqc-server, opaque payloads: msgs relayed/s" "$(result "$WORK/relay.out" msgs_per_s)"
printf '%-58s %s / %s ms\n' "pqc-server, opaque payloads: latency p50 / p99" "$(result "$WORK/relay.out" p50_ms)" "$(result "$WORK/relay.out" p99_ms)"
printf '%-58s %s us\n' "pqc-server, opaque payloads: CPU per message" "$(result "$WORK/relay.out" cpu_per_msg_us)"
printf '%-58s %s us\n' "pqc-server, opaque payloads: load generator CPU per msg" "$(result "$WORK/relay.out" gen_cpu_per_msg_us)"
fi
if step floor; then
printf '%-58s %s\n' "bare QUIC relay (forwards only) msgs relayed/s" "$(result "$WORK/floor-relay.out" msgs_per_s)"
printf '%-58s %s / %s ms\n' "bare QUIC relay: latency p50 / p99" "$(result "$WORK/floor-relay.out" p50_ms)" "$(result "$WORK/floor-relay.out" p99_ms)"
printf '%-58s %s us\n' "bare QUIC relay: CPU per message" "$(result "$WORK/floor-relay.out" cpu_per_msg_us)"
printf '%-58s %s us\n' "bare QUIC relay: load generator CPU per message" "$(result "$WORK/floor-relay.out" gen_cpu_per_msg_us)"
printf '%-58s %s us\n' "bare QUIC relay: CPU per message to a room of $ROOM" "$(result "$WORK/floor-fanout.out" cpu_per_msg_us)"
fi
if step mqtt; then
printf '%-58s %s\n' "mosquitto TLS QoS1 msgs relayed/s ($CLIENTS clients)" "$(result "$WORK/mqtt.out" msgs_per_s)"
printf '%-58s %s / %s ms\n' "mosquitto delivery latency p50 / p99" "$(result "$WORK/mqtt.out" p50_ms)" "$(result "$WORK/mqtt.out" p99_ms)"
printf '%-58s %s us\n' "mosquitto CPU per message" "$(result "$WORK/mqtt.out" cpu_per_msg_us)"
printf '%-58s %s us\n' "mosquitto: load generator CPU per message" "$(result "$WORK/mqtt.out" gen_cpu_per_msg_us)"
fi
if step pairs; then
printf '%-58s %s\n' "pairs ($CLIENTS clients, window $WINDOW): round: ours / mosquitto msgs/s (ratio); p99 ours / mosquitto" ""
median() { python3 -c 'import sys, statistics; print(round(statistics.median(float(x) for x in sys.argv[1:]), 1))' "$@"; }
OURS=(); MQTT=(); RATIO=(); OP99=(); MP99=()
for r in $(seq "$ROUNDS"); do
    o=$(result "$WORK/pair$r-ours.out" msgs_per_s); m=$(result "$WORK/pair$r-mqtt.out" msgs_per_s)
    op=$(result "$WORK/pair$r-ours.out" p99_ms); mp=$(result "$WORK/pair$r-mqtt.out" p99_ms)
    ratio=$(python3 -c "print(100*$o/$m)")
    printf '%-58s %s / %s (%.0f %%); %s / %s ms\n' "  round $r" "$o" "$m" "$ratio" "$op" "$mp"
    OURS+=("$o"); MQTT+=("$m"); RATIO+=("$ratio"); OP99+=("$op"); MP99+=("$mp")
done
printf '%-58s %s / %s msgs/s\n' "pairs: median throughput, ours / mosquitto" "$(median "${OURS[@]}")" "$(median "${MQTT[@]}")"
printf '%-58s %s %%\n' "pairs: median of the rounds' ratios" "$(median "${RATIO[@]}")"
printf '%-58s %s / %s ms\n' "pairs: median p99, ours / mosquitto" "$(median "${OP99[@]}")" "$(median "${MP99[@]}")"
if step floor; then
printf '%-58s %s\n' "same rounds, bare QUIC relay: msgs/s (ratio to mosquitto); p99" ""
FRATIO=(); FP99=()
for r in $(seq "$ROUNDS"); do
    f=$(result "$WORK/pair$r-floor.out" msgs_per_s); m=$(result "$WORK/pair$r-mqtt.out" msgs_per_s)
    fp=$(result "$WORK/pair$r-floor.out" p99_ms)
    ratio=$(python3 -c "print(100*$f/$m)")
    printf '%-58s %s (%.0f %%); %s ms\n' "  round $r" "$f" "$ratio" "$fp"
    FRATIO+=("$ratio"); FP99+=("$fp")
done
printf '%-58s %s %%\n' "bare QUIC relay: median of the rounds' ratios to mosquitto" "$(median "${FRATIO[@]}")"
printf '%-58s %s ms\n' "bare QUIC relay: median p99" "$(median "${FP99[@]}")"
fi
fi
if step idle; then
printf '%-58s %s KiB -> %s KiB\n' "server RSS, $IDLE idle logged-in connections" "$(result "$WORK/idle.out" rss_before_kib)" "$(result "$WORK/idle.out" rss_after_kib)"
printf '%-58s %s KiB\n' "  per connection" "$(result "$WORK/idle.out" per_conn_kib)"
fi
if step file; then
printf '%-58s %.2f s, %s MiB/s\n' "pqc-client send-file ${FILE_MIB} MiB (wall, whole command; median)" "$SEND_S" "$SEND_MIBS"
printf '%-58s %.2f s, %s MiB/s\n' "pqc-client recv ${FILE_MIB} MiB (wall, whole command; median)" "$RECV_S" "$RECV_MIBS"
printf '%-58s %s MiB/s\n' "pqc-client end to end (upload + download)" "$E2E_MIBS"
printf '%-58s %.2f s\n' "  profile open (Argon2id) per command (whoami)" "$OPEN_S"
printf '%-58s %s MiB/s\n' "plain quinn, one stream, same bytes (median)" "$QUINN"
printf '%-58s %.2f s, %s MiB/s\n' "  send-file: the upload alone (median)" "$SEND_XS" "$SEND_XMIBS"
printf '%-58s %.2f s, %s MiB/s\n' "  recv: the download alone (median)" "$RECV_XS" "$RECV_XMIBS"
printf '%-58s %.0f%% / %.0f%%\n' "send-file / recv vs plain quinn (whole commands)" "$R_SEND" "$R_RECV"
printf '%-58s %.0f%% / %.0f%%\n' "upload / download alone vs plain quinn" "$R_SEND_X" "$R_RECV_X"
printf '%-58s %s\n' "  (median over the rounds of quinn's time / ours, same round)" ""
printf '%-58s %s MiB/s\n' "disk: the same bytes written and flushed (dd, median)" "$DISK"
printf '%-58s %.0f%%\n' "upload alone vs the slower of plain quinn and the disk" "$R_SEND_B"
fi
if step room; then
printf '%-58s %s us\n' "room of $ROOM: server CPU per message to all members" "$(result "$WORK/room.out" cpu_per_msg_us)"
printf '%-58s %s us\n' "room: server CPU per join (average over sizes 1..$ROOM)" "$(result "$WORK/room.out" cpu_per_join_us)"
printf '%-58s %s ms\n' "room: relay latency of the last join (all members have it)" "$(result "$WORK/room.out" last_join_ms)"
printf '%-58s %s/s, %s / %s ms\n' "room: messages to all members, p50 / p99 latency" "$(result "$WORK/room.out" msgs_per_s)" \
    "$(result "$WORK/room.out" p50_ms)" "$(result "$WORK/room.out" p99_ms)"
fi
if step sparse; then
printf '%-58s %s us\n' "sparse room ($ROOM_PAUSE_MS ms apart): server CPU per message" "$(result "$WORK/sparse.out" cpu_per_msg_us)"
fi
