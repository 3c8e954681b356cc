"""Canary through a real waypoint: a 90/10 HTTPRoute (README's example: `x-canary: true`
to v2, the rest split 90/10 between Services web-v1 and web-v2) measured over 2,000+
requests from a real client in a meshed pod, then the weights rewritten twice in the
config while the same client keeps going (50/50, then 0/100): not one request fails across
either change, and each phase lands within a binomial tolerance of its weights."""
import time

from e2e.l7route.traffic import (applied, apply_and_wait, binomial_bounds, failures, records, rule_weights, run,
                                 start, wait_records)

VIP = "10.96.0.10"
PHASE_A, PHASE_B, PHASE_C = 2000, 1000, 300


def canary(v1: int, v2: int) -> str:
    return f"""apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web-canary, namespace: default}}
spec:
  parentRefs: [{{group: "", kind: Service, name: web, port: 80}}]
  rules:
  - matches: [{{headers: [{{name: x-canary, value: "true"}}]}}]
    backendRefs: [{{name: web-v2, port: 80}}]
  - backendRefs: [{{name: web-v1, port: 80, weight: {v1}}}, {{name: web-v2, port: 80, weight: {v2}}}]
"""



def now_weights(v1, v2):
    return lambda routes: rule_weights(routes, "web-canary") == [[1], [v1, v2]]


def split(recs):
    pods = {}
    for r in recs:
        pods[r["pod"]] = pods.get(r["pod"], 0) + 1
    return pods


def assert_split(recs, p_v2, phase):
    n = len(recs)
    pods = split(recs)
    assert set(pods) <= {"web-v1", "web-v2"}, pods
    lo, hi = binomial_bounds(n, p_v2)
    assert lo <= pods.get("web-v2", 0) <= hi, (f"{phase}: web-v2 answered {pods.get('web-v2', 0)} of {n}, "
                                               f"expected {n * p_v2:.0f} within 5 sigma [{lo:.0f}, {hi:.0f}]")


def test_a_90_10_split_then_new_weights_mid_run_without_a_failed_request(lab, tmp_path):
    with applied(lab, canary(90, 10), "web", now_weights(90, 10), "the 90/10 canary route"):
        # the header rule: every x-canary request reaches v2 only
        flagged = run(lab, tmp_path / "canary.jsonl", VIP, count=100, concurrency=4, header="x-canary:true")
        assert failures(flagged) == [] and split(flagged) == {"web-v2": 100}, split(flagged)

        out, stop = tmp_path / "loop.jsonl", tmp_path / "stop"
        proc = start(lab, out, VIP, count=100_000, concurrency=16, duration=90, stop_file=stop)
        try:
            wait_records(out, proc, lambda rs: len(rs) >= PHASE_A, f"{PHASE_A} requests at 90/10")
            t_change_b = time.time()
            apply_and_wait(lab, canary(50, 50), "web", now_weights(50, 50), "50/50 at the waypoint")
            t_b = time.time()
            wait_records(out, proc, lambda rs: sum(r["t0"] > t_b for r in rs) >= PHASE_B, f"{PHASE_B} requests at 50/50")
            t_change_c = time.time()
            apply_and_wait(lab, canary(0, 100), "web", now_weights(0, 100), "0/100 at the waypoint")
            t_c = time.time()
            wait_records(out, proc, lambda rs: sum(r["t0"] > t_c for r in rs) >= PHASE_C, f"{PHASE_C} requests at 0/100")
        finally:
            stop.touch()
            _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-2000:]
        recs = records(out)
        bad = failures(recs)
        assert bad == [], f"{len(bad)} of {len(recs)} requests failed across the weight changes: {bad[:5]}"
        a = [r for r in recs if r["t1"] < t_change_b]
        b = [r for r in recs if r["t0"] > t_b and r["t1"] < t_change_c]
        c = [r for r in recs if r["t0"] > t_c]
        print(f"{len(recs)} requests, none failed; 90/10: {split(a)}, 50/50: {split(b)}, 0/100: {split(c)}")
        assert len(a) >= PHASE_A and len(b) >= PHASE_B - 20 and len(c) >= PHASE_C, (len(a), len(b), len(c))
        assert_split(a, 0.10, "90/10")
        assert_split(b, 0.50, "50/50")
        assert split(c) == {"web-v2": len(c)}, f"0/100: {split(c)}"   # weight 0 sends nothing
