"""Privacy benchmark: what the deny list's Argon2id costs a terminal and an attacker, and what sealing costs.

**Argon2id (chot.personal.deny_person_hash).** For a grid of parameters (t 1..3, m 16, 32, 48
and 64 MiB, p 1) and for ARGON2_DEFAULT:

- *one lookup on the terminal*: CPU ms (time.process_time, user + system) and wall ms per
  hash, in this process, as the terminal computes it (argon2-cffi allocates and page-faults
  fresh memory on every call);
- *the attacker's cost per candidate*: the same function in a child process whose allocator
  keeps and reuses the freed memory (glibc MALLOC_MMAP_MAX_=0, MALLOC_TRIM_THRESHOLD_ high), as
  a brute-force loop would: no page faults, only the hashing itself, on transparent huge pages
  (glibc.malloc.hugetlb=1) when the kernel allows them. This is the baseline of
  each grid figure, measured in the same round.
- *reversal of one deny-list entry*: every ID number of one province and birth year. A CCCD
  number is province (3 digits), sex/century (1), birth year (2) and 6 free digits: 10^6 per
  sex, 2 x 10^6 for both. Cost = 2e6 x the lower of the two per-hash CPU times of the round
  (conservative). The issue's goal is >= 1e5 CPU-seconds on this machine; a recommendation
  wants >= 1.5e5 in every round, so that a faster machine still pays the goal.

**Sealing.** Sealer.seal per event (a native declaration's person dict, one ephemeral key per
1000 events) against a libsodium SealedBox per event (PyNaCl, same JSON and base64), and
Opener.open with its Box cache against SealedBox.decrypt per event; PersonIndex.key (HMAC) and
DataCipher.encrypt/decrypt per event.

The Pi 4 figures are estimates (see ARGON2_PI4_BASIS and bench.common.PI4_ASSUMPTION), never
measurements. Run alone: `.venv/bin/python bench/run.py --quick --only privacy`.
"""

import base64
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid as uuidlib
from pathlib import Path

from bench.common import PI4_ASSUMPTION, Area, BenchError, fmt, pi4_time, progress

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent

GRID_T = (1, 2, 3)
GRID_M = (16384, 32768, 49152, 65536)
CANDIDATES = 2_000_000  # every ID number of one province and birth year (both sexes)
GOAL_CPU_S = 1e5  # the issue: reversing one entry costs at least this on this machine
MARGIN_CPU_S = 1.5e5  # what a recommendation asks, to survive a faster machine
TIE = 0.10  # terminal CPU costs within 10% of each other count as equal in the recommendation
ROTATE_EVENTS = 1000  # events per ephemeral key (chot.personal.Sealer default)

# Sizes per mode: hashes per grid point per round, events per sealing round, rounds.
SIZES = {
    "smoke": {"hashes": 1, "events": 200, "grid": ((1, 16384),)},
    "quick": {"hashes": 2, "events": 3000, "grid": None},
    "full": {"hashes": 2, "events": 10_000, "grid": None},
}

ARGON2_PI4_FACTOR = (3.0, 6.0)
ARGON2_PI4_BASIS = (
    "ESTIMATE, not a measurement: one Argon2id hash on a Raspberry Pi 4 (Cortex-A72, 1.5 GHz, LPDDR4) "
    f"is taken to cost {ARGON2_PI4_FACTOR[0]:.0f}-{ARGON2_PI4_FACTOR[1]:.0f}x this machine's CPU time: the "
    "usual 3-5x of bench.common for a 1.5 GHz Cortex-A72 core (out-of-order, but narrower and slower) "
    "against one x86 server core, widened to 6x because "
    "argon2-cffi builds libargon2's SSE2 code on x86 only (the portable reference C on ARM) and the "
    "hash is bound by memory bandwidth, which is a few GB/s on a Pi 4"
)

# the attacker's allocator: freed memory kept and reused (no mmap, no trim), on transparent huge pages
_ATTACKER_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40),
                 "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
ATTACKER_LABEL = "attacker's CPU per candidate (memory reused, huge pages)"


def _pname(t, m):
    return f"t{t}.m{m // 1024}"


def _plabel(t, m, p=1):
    return f"t={t} m={m // 1024} MiB p={p}"


def _cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def _hash_loop(points, n, salt, start=0):
    """{name: {cpu_ms, wall_ms, user_ms, sys_ms}} per hash of `n` hashes of distinct candidates per point."""
    from chot.personal import deny_person_hash

    out = {}
    k = start
    for t, m in points:
        params = {"t": t, "m_kib": m, "p": 1}
        c0, w0, (u0, s0) = time.process_time(), time.perf_counter(), _cpu()
        for _ in range(n):
            deny_person_hash(f"id:0010{90 + k % 10}{k:06d}", salt, params)
            k += 1
        c1, w1, (u1, s1) = time.process_time(), time.perf_counter(), _cpu()
        out[_pname(t, m)] = {"cpu_ms": (c1 - c0) * 1000 / n, "wall_ms": (w1 - w0) * 1000 / n,
                             "user_ms": (u1 - u0) * 1000 / n, "sys_ms": (s1 - s0) * 1000 / n}
    return out


def _attacker_worker(argv):
    """Child process: warm the heap once per point, then time `n` hashes per point; JSON on stdout."""
    spec = json.loads(argv[0])
    salt = bytes.fromhex(spec["salt"])
    points = [tuple(p) for p in spec["points"]]
    _hash_loop(points, 1, salt, start=900_000)  # the heap grows to the largest m once, then is reused
    out = _hash_loop(points, spec["n"], salt)
    try:
        rollup = Path("/proc/self/smaps_rollup").read_text()
        out["huge_kib"] = int(rollup.split("AnonHugePages:", 1)[1].split()[0])
    except (OSError, IndexError, ValueError):
        out["huge_kib"] = None
    print(json.dumps(out))


def _attacker(points, n, salt):
    env = {**os.environ, **_ATTACKER_ENV}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.privacy", "--attacker",
         json.dumps({"points": points, "n": n, "salt": salt.hex()})],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    if proc.returncode != 0:
        raise BenchError(f"the attacker's Argon2id loop (a child process) failed: {proc.stderr[-500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _med(vals):
    return statistics.median(vals) if vals else None


def argon2(ctx, area):
    from chot.personal import ARGON2_DEFAULT

    sz = SIZES[ctx.mode]
    d = (ARGON2_DEFAULT["t"], ARGON2_DEFAULT["m_kib"])
    points = list(sz["grid"] or [(t, m) for t in GRID_T for m in GRID_M])
    if d not in points:
        points.append(d)
    salt = os.urandom(16)
    n = sz["hashes"]
    _hash_loop([d], 1, salt, start=800_000)  # load the library, warm the allocator's top
    term = {_pname(*p): [] for p in points}
    att = {_pname(*p): [] for p in points}
    huge = []
    for r in range(ctx.runs):
        got = _hash_loop(points, n, salt, start=r * 1000)
        a = _attacker(points, n, salt)
        huge.append(a.get("huge_kib"))
        for p in points:
            term[_pname(*p)].append(got[_pname(*p)])
            att[_pname(*p)].append(a[_pname(*p)])
        progress(f"privacy: Argon2id round {r + 1}/{ctx.runs} done ({len(points)} parameter sets, {n} hashes each)")

    lo, hi = ARGON2_PI4_FACTOR
    rows = {}
    for t, m in points:
        name = _pname(t, m)
        cpu = [x["cpu_ms"] for x in term[name]]
        acpu = [x["cpu_ms"] for x in att[name]]
        rev = [CANDIDATES * min(c, a) / 1000 for c, a in zip(cpu, acpu, strict=True)]
        rows[(t, m)] = {"cpu": _med(cpu), "wall": _med([x["wall_ms"] for x in term[name]]),
                        "sys": _med([x["sys_ms"] for x in term[name]]), "att": _med(acpu),
                        "att_sys": _med([x["sys_ms"] for x in att[name]]), "rev": _med(rev),
                        "rev_min": min(rev), "rev_values": rev, "cpu_values": cpu, "att_values": acpu,
                        "wall_values": [x["wall_ms"] for x in term[name]]}

    # ARGON2_DEFAULT: its own figures
    row = rows[d]
    dl = f"ARGON2_DEFAULT ({_plabel(*d, ARGON2_DEFAULT['p'])})"
    pi4 = {"estimate": f"~{fmt(row['cpu'] * lo)}-{fmt(row['cpu'] * hi)} ms per lookup", "basis": ARGON2_PI4_BASIS}
    area.figure("argon2.default.cpu", f"{dl}: one deny-list lookup on the terminal, CPU", "CPU ms",
                row["cpu_values"], baseline="argon2.default.attacker", base_values=row["att_values"],
                base_label=ATTACKER_LABEL, pi4=pi4,
                extra={"params": dict(ARGON2_DEFAULT), "system_ms": row["sys"]})
    area.figure("argon2.default.wall", f"{dl}: one deny-list lookup on the terminal, wall", "ms",
                row["wall_values"], pi4={"estimate": f"~{fmt(row['cpu'] * lo)}-{fmt(row['cpu'] * hi)} ms",
                                         "basis": ARGON2_PI4_BASIS}, extra={"params": dict(ARGON2_DEFAULT)})
    goal = {"text": f">= {GOAL_CPU_S:.0e} CPU-s (recommended >= {MARGIN_CPU_S:.1e} in every round)", "min": GOAL_CPU_S,
            "met": row["rev"] >= GOAL_CPU_S}
    area.figure("argon2.default.reversal", f"{dl}: reversing one entry ({CANDIDATES:,} candidates: one province "
                "and birth year)", "CPU-s", row["rev_values"], higher_is_better=True, goal=goal,
                pi4={"estimate": "not applicable (an attacker's machine)",
                     "basis": "the reversal is the attacker's cost on this machine; a Pi is not the attacker"},
                extra={"params": dict(ARGON2_DEFAULT), "candidates": CANDIDATES,
                       "margin_met": row["rev_min"] >= MARGIN_CPU_S})

    # the grid: one figure per parameter set (terminal CPU per lookup, the attacker's as baseline,
    # the reversal in the goal)
    for t, m in points:
        if (t, m) == d and sz["grid"] is not None:
            continue
        row = rows[(t, m)]
        met, margin = row["rev"] >= GOAL_CPU_S, row["rev_min"] >= MARGIN_CPU_S
        goal = {"text": f"reversal {row['rev']:.2e} CPU-s >= {GOAL_CPU_S:.0e}" + (" (with margin)" if margin else ""),
                "min": GOAL_CPU_S, "met": met}
        area.figure(f"argon2.{_pname(t, m)}", f"Argon2id {_plabel(t, m)}: one lookup, CPU", "CPU ms",
                    row["cpu_values"], baseline=f"argon2.{_pname(t, m)}.attacker", base_values=row["att_values"],
                    base_label=ATTACKER_LABEL, goal=goal,
                    pi4={"estimate": f"~{fmt(row['cpu'] * lo)}-{fmt(row['cpu'] * hi)} ms", "basis": ARGON2_PI4_BASIS},
                    extra={"params": {"t": t, "m_kib": m, "p": 1}, "wall_ms": row["wall"], "system_ms": row["sys"],
                           "reversal_cpu_s": row["rev"], "reversal_min_cpu_s": row["rev_min"], "margin_met": margin})

    # notes and the recommendation
    area.note("Argon2id wall ms per lookup on the terminal (median): " + ", ".join(
        f"{_plabel(t, m)} {fmt(rows[(t, m)]['wall'])}" for t, m in points) + ".")
    area.note("Reversal of one entry, 2e6 x CPU-s per candidate (median [min]): " + ", ".join(
        f"{_plabel(t, m)} {rows[(t, m)]['rev']:.2e} [{rows[(t, m)]['rev_min']:.2e}]"
        + ("" if rows[(t, m)]["rev"] >= GOAL_CPU_S else " (below 1e5)") for t, m in points) + ".")
    d_row = rows[d]
    area.note(f"Of a terminal lookup's CPU, system time (fresh pages zeroed by the kernel) is "
              f"{fmt(d_row['sys'])} of {fmt(d_row['cpu'])} ms for the default; the attacker's loop, reusing its "
              f"memory, pays {fmt(d_row['att_sys'])} ms of it; the reversal takes the lower of the two CPU "
              f"times per round. The attacker's child process held {huge} KiB on transparent huge pages at "
              "its end, per round (0: the kernel gave none, and its figure is without them).")
    rec = recommend(rows, d, ARGON2_DEFAULT)
    area.note("Recommendation: " + rec)
    progress("privacy: recommendation: " + rec)
    area.note("CPU-seconds on this x86 core are the issue's measure. GPUs and ASICs lower an attacker's cost "
              "per candidate for Argon2id far less than for SHA-256, and more memory (m) is what limits them "
              "most; the salt is per list, so the work is per list and per entry tried.")
    area.note(f"Pi 4 Argon2id estimates: {ARGON2_PI4_BASIS}.")
    return rows


def recommend(rows, d, default):
    """The default's verdict and the cheapest measured parameters (terminal CPU per lookup) meeting the margin."""
    # with margin: every round's reversal >= MARGIN_CPU_S (not only the median)
    ok = [(r["cpu"], p) for p, r in rows.items() if r["rev_min"] >= MARGIN_CPU_S]
    dr = rows[d]
    lo, hi = ARGON2_PI4_FACTOR
    dtxt = (f"ARGON2_DEFAULT {json.dumps(default)}: lookup {fmt(dr['cpu'])} CPU ms (Pi 4 estimate "
            f"~{fmt(dr['cpu'] * lo)}-{fmt(dr['cpu'] * hi)} ms), reversal {dr['rev']:.2e} CPU-s: ")
    if dr["rev_min"] >= MARGIN_CPU_S:
        dtxt += f"meets the goal (>= {GOAL_CPU_S:.0e}) with margin (>= {MARGIN_CPU_S:.1e} in every round); keep it."
    elif dr["rev"] >= GOAL_CPU_S:
        dtxt += f"meets the goal (>= {GOAL_CPU_S:.0e}) but without the margin (>= {MARGIN_CPU_S:.1e})."
    else:
        dtxt += f"MISSES the goal (>= {GOAL_CPU_S:.0e})."
    if not ok:
        return dtxt + " No measured parameter set reaches the margin: raise t or m beyond the grid."
    # the cheapest terminal lookup; within TIE of it, the most memory (what limits GPUs most), then fewer passes
    cheapest = min(c for c, _p in ok)
    t, m = max((p for c, p in ok if c <= cheapest * (1 + TIE)), key=lambda p: (p[1], -p[0]))
    r = rows[(t, m)]
    best = (f" Cheapest measured set with the margin (terminal CPU within {TIE:.0%} of the lowest, then the most "
            f"memory): {{\"t\": {t}, \"m_kib\": {m}, \"p\": 1}} (lookup {fmt(r['cpu'])} CPU ms, reversal "
            f"{r['rev']:.2e} CPU-s)" + (", which is ARGON2_DEFAULT." if (t, m) == d else
                                        f", {1 - r['cpu'] / dr['cpu']:.0%} cheaper than ARGON2_DEFAULT."))
    if dr["rev_min"] < MARGIN_CPU_S:
        best += f" Set ARGON2_DEFAULT = {{\"t\": {t}, \"m_kib\": {m}, \"p\": 1}}."
    return dtxt + best


# --- sealing ----------------------------------------------------------------------------------


def _person():
    from chot.personal import person_id_for_id
    from device.credentials.issue_cli import make_test_identities
    from device.credentials.native import person_of

    ident = make_test_identities(1, seed=9)[0]
    person = person_of(ident, bytes(range(8)))
    return person, person_id_for_id(ident["id_number"])


def _b64e(data):
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _b64d(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _per_event_us(fn, items):
    t = time.perf_counter()
    out = [fn(x) for x in items]
    return (time.perf_counter() - t) * 1e6 / len(items), out


def sealing(ctx, area):
    from nacl.public import PrivateKey, SealedBox

    from chot.personal import DataCipher, Opener, PersonIndex, Sealer, seal_key_id

    person, pid = _person()
    cred = uuidlib.uuid4().hex
    n = SIZES[ctx.mode]["events"]
    sk = PrivateKey.generate()
    pub = bytes(sk.public_key)
    kid = seal_key_id(pub)
    index, cipher = PersonIndex(os.urandom(32)), DataCipher(os.urandom(32))
    res = {k: [] for k in ("seal", "seal_sb", "open", "open_sb", "hmac", "enc", "dec")}
    plain_bytes = len(json.dumps({"u": str(uuidlib.uuid4()), "p": person, "i": pid, "c": cred},
                                 separators=(",", ":"), ensure_ascii=False).encode())
    for r in range(ctx.runs):
        uuids = [str(uuidlib.uuid4()) for _ in range(n)]
        sealer = Sealer(pub, rotate_events=ROTATE_EVENTS, rotate_s=1e9)
        us, sealed = _per_event_us(lambda u, s=sealer: s.seal(u, person, pid, cred), uuids)
        res["seal"].append(us)

        sb_enc = SealedBox(sk.public_key)

        def sb_seal(u, sb=sb_enc):
            plain = json.dumps({"u": u, "p": person, "i": pid, "c": cred}, separators=(",", ":"),
                               ensure_ascii=False).encode("utf-8")
            return {"kid": kid, "ct": _b64e(sb.encrypt(plain))}

        us, sb_sealed = _per_event_us(sb_seal, uuids)
        res["seal_sb"].append(us)

        opener = Opener({kid: sk})  # a fresh cache: each ephemeral key costs one X25519 here
        us, opened = _per_event_us(lambda x, o=opener: o.open(x[0], x[1]), list(zip(sealed, uuids, strict=True)))
        res["open"].append(us)

        sb_dec = SealedBox(sk)

        def sb_open(x, sb=sb_dec):
            obj = json.loads(sb.decrypt(_b64d(x[0]["ct"])))
            if obj.get("u") != x[1]:
                raise BenchError("SealedBox baseline: the uuid does not match")
            return obj

        us, sb_opened = _per_event_us(sb_open, list(zip(sb_sealed, uuids, strict=True)))
        res["open_sb"].append(us)
        if opened[-1].person != person or sb_opened[-1]["p"] != person or opened[0].person_id != pid:
            raise BenchError("sealing: an opened part differs from what was sealed")

        us, _keys = _per_event_us(index.key, [f"{pid}{i % 10}" for i in range(n)])
        res["hmac"].append(us)
        us, encs = _per_event_us(lambda i: cipher.encrypt(person, "dev-0001", i), range(n))
        res["enc"].append(us)
        us, decs = _per_event_us(lambda i, e=encs: cipher.decrypt(e[i], "dev-0001", i), range(n))
        res["dec"].append(us)
        if decs[-1] != person:
            raise BenchError("DataCipher: decrypted fields differ")
        progress(f"privacy: sealing round {r + 1}/{ctx.runs} done ({n} events)")

    def rate(vals):
        return 1e6 / statistics.median(vals)

    def pi4(vals):
        return {"estimate": pi4_time(statistics.median(vals), "µs/event"), "basis": PI4_ASSUMPTION}

    area.figure("seal.sealer", f"Sealer.seal on the terminal (native declaration, {ROTATE_EVENTS} events per "
                "ephemeral key)", "µs/event", res["seal"], baseline="seal.sealedbox", base_values=res["seal_sb"],
                base_label="SealedBox per event (same JSON, base64)", pi4=pi4(res["seal"]),
                extra={"events_per_s": rate(res["seal"]), "baseline_events_per_s": rate(res["seal_sb"]),
                       "plaintext_bytes": plain_bytes, "events": n})
    area.figure("open.opener", f"Opener.open at the collector, Box cache ({ROTATE_EVENTS} events per ephemeral key)",
                "µs/event", res["open"], baseline="open.sealedbox", base_values=res["open_sb"],
                base_label="SealedBox.decrypt per event (same JSON, uuid check)", pi4=pi4(res["open"]),
                extra={"events_per_s": rate(res["open"]), "baseline_events_per_s": rate(res["open_sb"]), "events": n})
    area.figure("index.hmac", "PersonIndex.key (HMAC-SHA256 of a person id)", "µs/event", res["hmac"],
                pi4=pi4(res["hmac"]), extra={"events_per_s": rate(res["hmac"])})
    area.figure("data.encrypt", "DataCipher.encrypt (ChaCha20-Poly1305 of the person's fields, JSON)", "µs/event",
                res["enc"], pi4=pi4(res["enc"]), extra={"events_per_s": rate(res["enc"])})
    area.figure("data.decrypt", "DataCipher.decrypt (the same, back)", "µs/event", res["dec"], pi4=pi4(res["dec"]),
                extra={"events_per_s": rate(res["dec"])})
    area.note(f"Sealing, events/s (median): Sealer.seal {fmt(rate(res['seal']))} vs SealedBox "
              f"{fmt(rate(res['seal_sb']))}; Opener.open {fmt(rate(res['open']))} vs SealedBox.decrypt "
              f"{fmt(rate(res['open_sb']))}; PersonIndex.key {fmt(rate(res['hmac']))}; DataCipher.encrypt "
              f"{fmt(rate(res['enc']))}, decrypt {fmt(rate(res['dec']))}. The person's part is {plain_bytes} bytes "
              f"of JSON; {n} events per round, a fresh Sealer and Opener each round, so each {ROTATE_EVENTS} events "
              "pay one X25519 key generation and agreement on each side (a SealedBox pays them on every event).")


def run(ctx):
    area = Area("privacy", "Personal data: deny-list Argon2id and sealing")
    load0 = os.getloadavg()[0]
    argon2(ctx, area)
    sealing(ctx, area)
    area.note(f"One core, one thread; {ctx.runs} rounds; load average {load0:.2f} at the start of this area, "
              f"{os.getloadavg()[0]:.2f} at its end (the machine's {os.cpu_count()} cores may be shared).")
    return area


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--attacker":
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        _attacker_worker(sys.argv[2:])
    else:
        sys.exit("run it through bench/run.py: .venv/bin/python bench/run.py --quick --only privacy")
